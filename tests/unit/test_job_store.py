"""The job store against a real Redis server (the embedded one): every transition, races and retention."""

from __future__ import annotations

import threading

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from serve.jobs import (
    RETRIES_EXHAUSTED,
    CancelConflict,
    EmbeddedRedis,
    IdempotencyConflict,
    JobError,
    JobNotFound,
    JobRecord,
    JobStatus,
    JobStore,
    QueueFull,
)

T0 = 1_700_000_000.0
LEASE = 60.0
RETENTION = 3600.0


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with EmbeddedRedis(tmp_path_factory.mktemp("redis")) as embedded:
        yield embedded


@pytest.fixture
def client(server):
    conn = server.client()
    conn.flushdb()
    yield conn
    conn.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make_store(client, clock):
    def make(**kwargs) -> JobStore:
        options = {"lease_seconds": LEASE, "retention_seconds": RETENTION, "clock": clock, **kwargs}
        return JobStore(client, **options)

    return make


@pytest.fixture
def store(make_store) -> JobStore:
    return make_store()


def job(request_id: str, tenant: str = "acme", **kwargs) -> JobRecord:
    return JobRecord(request_id=request_id, tenant=tenant, params={"seed": 1, "steps": 7}, **kwargs)


def status(store: JobStore, request_id: str) -> JobStatus:
    return store.get(request_id).status


# -- records -------------------------------------------------------------------------------------------------


def full_record() -> JobRecord:
    return JobRecord(
        request_id="r1",
        tenant="acme",
        status="completed",
        params={"prompt": "hi", "nested": {"list": [1, 2.5, None], "empty": []}},
        inputs={"image": "inputs/r1/image.png"},
        created_at=T0 + 0.123456789,
        started_at=T0 + 1,
        finished_at=T0 + 2,
        updated_at=T0 + 2,
        attempt=2,
        max_attempts=3,
        progress=1.0,
        eta_seconds=0.0,
        error=JobError("model_error", "boom"),
        output={"video": "outputs/r1.mp4"},
        timings={"sampling": 1.5},
        reproducibility={"seed": 2**63 - 1},
        expires_at=T0 + 100,
        cancel_requested=False,
        lease_owner="w1",
        lease_expires_at=T0 + 61,
        idempotency_key="key-1",
    )


def test_record_round_trips_through_json_and_redis_hash():
    record = full_record()
    assert record.status is JobStatus.COMPLETED
    assert JobRecord.from_json(record.to_json()) == record
    as_bytes = {k.encode(): v.encode() for k, v in record.to_redis_hash().items()}
    assert JobRecord.from_redis_hash(as_bytes) == record


def test_record_hash_leaves_none_fields_out_and_ignores_unknown_fields():
    record = JobRecord(request_id="r1", tenant="acme")
    mapping = record.to_redis_hash()
    assert "started_at" not in mapping and "error" not in mapping and "output" not in mapping
    mapping["_seq"] = "7"
    mapping["added_by_a_newer_version"] = "x"
    assert JobRecord.from_redis_hash(mapping) == record
    assert JobRecord.from_dict({**record.to_dict(), "unknown": 1}) == record


def test_status_terminal_set():
    assert {s for s in JobStatus if s.is_terminal} == {
        JobStatus.COMPLETED,
        JobStatus.FAILED,
        JobStatus.CANCELLED,
    }
    assert not JobRecord(request_id="r", tenant="t").is_terminal


def test_record_is_expired():
    record = JobRecord(request_id="r", tenant="t", expires_at=T0)
    assert not record.is_expired(T0 - 1)
    assert record.is_expired(T0)
    assert not JobRecord(request_id="r", tenant="t").is_expired(T0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"request_id": "", "tenant": "t"}, "request_id"),
        ({"request_id": "r", "tenant": ""}, "tenant"),
        ({"request_id": "r", "tenant": "t", "status": "running"}, "running"),
        ({"request_id": "r", "tenant": "t", "progress": 1.5}, "progress"),
        ({"request_id": "r", "tenant": "t", "error": {"code": "", "message": "m"}}, "code"),
    ],
)
def test_record_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        JobRecord(**kwargs)


def test_record_decoding_rejects_bad_input():
    with pytest.raises(ValueError, match="JSON"):
        JobRecord.from_json("{not json")
    with pytest.raises(ValueError, match="tenant"):
        JobRecord.from_dict({"request_id": "r"})
    with pytest.raises(ValueError, match="attempt"):
        JobRecord.from_redis_hash({"request_id": "r", "tenant": "t", "attempt": "two"})
    with pytest.raises(ValueError, match="object"):
        JobError.from_dict(["code"])


# -- create, get, queue --------------------------------------------------------------------------------------


def test_create_stamps_a_queued_record(store, clock):
    stale = job("a", status=JobStatus.FAILED, attempt=5, lease_owner="w9", progress=0.5)
    record, created = store.create(stale)
    assert created
    assert record.status is JobStatus.IN_QUEUE
    assert (record.attempt, record.max_attempts, record.progress) == (0, 3, 0.0)
    assert record.created_at == record.updated_at == T0
    assert record.lease_owner is None and record.started_at is None
    assert store.get("a") == record
    assert record.params == {"seed": 1, "steps": 7}
    assert store.queue_position("a") == 0
    assert store.counts()[JobStatus.IN_QUEUE] == 1


def test_create_refuses_an_existing_request_id(store):
    store.create(job("a"))
    with pytest.raises(ValueError, match="already exists"):
        store.create(job("a"))
    assert store.queued_count() == 1


def test_queue_positions_shift_as_jobs_leave(store):
    for rid in "abcd":
        store.create(job(rid))
    assert [store.queue_position(r) for r in "abcd"] == [0, 1, 2, 3]
    assert store.claim("a", "w1") is not None
    assert store.queue_position("a") is None
    assert [store.queue_position(r) for r in "bcd"] == [0, 1, 2]
    store.cancel("c", "acme")
    assert [store.queue_position(r) for r in "bd"] == [0, 1]
    assert store.queued_ids() == ["b", "d"]
    assert store.queued_ids(limit=1) == ["b"]
    assert store.queued_ids(limit=0) == []
    assert store.queue_position("unknown") is None


def test_get_is_tenant_scoped(store):
    store.create(job("a", tenant="acme"))
    assert store.get("a", "acme") is not None
    assert store.get("a", "other") is None
    assert store.get("a") is not None
    assert store.get("missing", "acme") is None


def test_namespaces_are_isolated(make_store):
    one, two = make_store(namespace="one"), make_store(namespace="two")
    one.create(job("a"))
    assert two.get("a") is None
    assert two.queued_count() == 0
    assert two.claim("a", "w1") is None
    assert one.queued_count() == 1


def test_store_accepts_a_decoding_client(server, client, clock):
    conn = server.client(decode_responses=True)
    store = JobStore(conn, clock=clock)
    store.create(job("a"), idempotency_key="k", body_hash="h")
    assert store.claim("a", "w1").attempt == 1
    assert store.requeue_expired(now=T0 + 3600) == (["a"], [])
    assert store.queued_ids() == ["a"]
    conn.close()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"namespace": ""}, "namespace"),
        ({"namespace": "a{b}"}, "namespace"),
        ({"lease_seconds": 0}, "lease_seconds"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_releases": -1}, "max_releases"),
        ({"retention_seconds": 0}, "retention_seconds"),
        ({"max_queued": -1}, "max_queued"),
    ],
)
def test_store_rejects_bad_settings(client, kwargs, match):
    with pytest.raises(ValueError, match=match):
        JobStore(client, **kwargs)


# -- idempotency ---------------------------------------------------------------------------------------------


def test_idempotent_create_same_body_returns_the_first_job(store):
    first, created = store.create(job("a"), idempotency_key="k1", body_hash="h1")
    again, created_again = store.create(job("b"), idempotency_key="k1", body_hash="h1")
    assert created and not created_again
    assert again.request_id == "a" == first.request_id
    assert again.idempotency_key == "k1"
    assert store.get("b") is None
    assert store.queued_count() == 1
    assert store.lookup_idempotent("acme", "k1", "h1").request_id == "a"
    assert store.lookup_idempotent("acme", "unused", "h1") is None


def test_idempotency_key_with_another_body_conflicts(store):
    store.create(job("a"), idempotency_key="k1", body_hash="h1")
    with pytest.raises(IdempotencyConflict) as info:
        store.create(job("b"), idempotency_key="k1", body_hash="h2")
    assert info.value.request_id == "a"
    with pytest.raises(IdempotencyConflict):
        store.lookup_idempotent("acme", "k1", "h2")
    assert store.get("b") is None


def test_idempotency_keys_are_per_tenant(store):
    store.create(job("a", tenant="acme"), idempotency_key="k1", body_hash="h1")
    record, created = store.create(job("b", tenant="other"), idempotency_key="k1", body_hash="h9")
    assert created and record.request_id == "b"
    assert store.lookup_idempotent("other", "k1", "h9").request_id == "b"


def test_idempotency_entries_expire(make_store, client):
    store = make_store(idempotency_seconds=1800)
    store.create(job("a"), idempotency_key="k1", body_hash="h1")
    keys = client.keys("{infinitetalk}:idem:*")
    assert len(keys) == 1
    assert 1_790_000 < client.pttl(keys[0]) <= 1_800_000
    client.delete(keys[0])  # what expiry does
    record, created = store.create(job("b"), idempotency_key="k1", body_hash="h2")
    assert created and record.request_id == "b"


def test_idempotency_key_needs_a_body_hash(store):
    with pytest.raises(ValueError, match="hash"):
        store.create(job("a"), idempotency_key="k1")


def test_idempotency_key_of_a_deleted_job_is_free_again(store, clock):
    store.create(job("a"), idempotency_key="k1", body_hash="h1")
    store.cancel("a", "acme")
    clock.advance(RETENTION)
    assert store.delete("a")
    record, created = store.create(job("b"), idempotency_key="k1", body_hash="h2")
    assert created and record.request_id == "b"


# -- queue bound ---------------------------------------------------------------------------------------------


def test_queue_bound(make_store):
    store = make_store(max_queued=2)
    store.create(job("a"), idempotency_key="k1", body_hash="h1")
    store.create(job("b"))
    with pytest.raises(QueueFull):
        store.create(job("c"))
    assert store.get("c") is None
    # A replay of an accepted job is answered even when full.
    assert store.create(job("x"), idempotency_key="k1", body_hash="h1") == (store.get("a"), False)
    store.claim("a", "w1")
    store.create(job("c"))
    assert store.queued_ids() == ["b", "c"]
    # Jobs that come back (reaper, release) are not refused by the bound.
    store.release("a", "w1")
    assert store.queued_count() == 3


def test_unbounded_queue(make_store):
    store = make_store(max_queued=None)
    for i in range(5):
        store.create(job(f"j{i}"))
    assert store.queued_count() == 5


# -- cancel --------------------------------------------------------------------------------------------------


def test_cancel_a_queued_job_means_it_never_runs(store, clock):
    store.create(job("a"))
    clock.advance(5)
    record = store.cancel("a", "acme")
    assert record.status is JobStatus.CANCELLED
    assert record.cancel_requested
    assert record.finished_at == T0 + 5
    assert record.expires_at == T0 + 5 + RETENTION
    assert store.queue_position("a") is None
    assert store.claim("a", "w1") is None
    assert status(store, "a") is JobStatus.CANCELLED


def test_cancel_twice_is_harmless(store, clock):
    store.create(job("a"))
    first = store.cancel("a", "acme")
    clock.advance(10)
    assert store.cancel("a", "acme") == first
    assert store.counts()[JobStatus.CANCELLED] == 1


def test_cancel_of_running_or_finished_jobs_conflicts(store):
    store.create(job("a"))
    store.create(job("b"))
    store.claim("a", "w1")
    with pytest.raises(CancelConflict) as info:
        store.cancel("a", "acme")
    assert info.value.record.status is JobStatus.IN_PROGRESS
    assert status(store, "a") is JobStatus.IN_PROGRESS
    store.complete("a", "w1", {"video": "v"})
    with pytest.raises(CancelConflict) as info:
        store.cancel("a", "acme")
    assert info.value.record.status is JobStatus.COMPLETED
    store.claim("b", "w1")
    store.fail("b", "w1", JobError("model_error", "x"))
    with pytest.raises(CancelConflict):
        store.cancel("b", "acme")


def test_cancel_unknown_or_foreign_job_is_not_found(store):
    store.create(job("a", tenant="acme"))
    with pytest.raises(JobNotFound):
        store.cancel("a", "other")
    with pytest.raises(JobNotFound):
        store.cancel("missing", "acme")
    assert status(store, "a") is JobStatus.IN_QUEUE


# -- claim, heartbeat, complete, fail ------------------------------------------------------------------------


def test_claim_starts_an_attempt_under_a_lease(store, clock):
    store.create(job("a"))
    clock.advance(3)
    record = store.claim("a", "w1")
    assert record.status is JobStatus.IN_PROGRESS
    assert record.attempt == 1
    assert record.lease_owner == "w1"
    assert record.started_at == T0 + 3
    assert record.lease_expires_at == T0 + 3 + LEASE
    assert store.in_progress_count() == 1 and store.queued_count() == 0


def test_duplicate_delivery_while_leased_is_dropped(store, clock):
    store.create(job("a"))
    store.claim("a", "w1")
    clock.advance(LEASE - 1)
    assert store.claim("a", "w2") is None
    assert store.claim("a", "w1") is None
    record = store.get("a")
    assert (record.lease_owner, record.attempt) == ("w1", 1)


def test_claim_of_missing_or_finished_job_is_none(store):
    assert store.claim("missing", "w1") is None
    store.create(job("a"))
    store.claim("a", "w1")
    store.complete("a", "w1", {"video": "v"})
    assert store.claim("a", "w2") is None
    assert status(store, "a") is JobStatus.COMPLETED


def test_heartbeat_extends_the_lease_and_reports_progress(store, clock):
    store.create(job("a"))
    store.claim("a", "w1")
    clock.advance(LEASE - 1)
    assert store.heartbeat("a", "w1", progress=0.25, eta_seconds=30.0)
    record = store.get("a")
    assert record.lease_expires_at == T0 + 2 * LEASE - 1
    assert (record.progress, record.eta_seconds) == (0.25, 30.0)
    clock.advance(LEASE - 1)  # past the first lease, within the extended one
    assert store.claim("a", "w2") is None
    assert store.requeue_expired() == ([], [])
    assert store.heartbeat("a", "w1")
    assert store.get("a").progress == 0.25  # unchanged when not given


def test_heartbeat_of_a_non_owner_is_refused(store):
    store.create(job("a"))
    assert not store.heartbeat("a", "w1")  # queued: nobody owns it
    store.claim("a", "w1")
    assert not store.heartbeat("a", "w2")
    assert not store.heartbeat("missing", "w1")
    with pytest.raises(ValueError, match="progress"):
        store.heartbeat("a", "w1", progress=-0.1)
    with pytest.raises(ValueError, match="eta"):
        store.heartbeat("a", "w1", eta_seconds=-1)


def test_complete_by_the_owner(store, clock):
    store.create(job("a"))
    store.claim("a", "w1")
    store.heartbeat("a", "w1", progress=0.5, eta_seconds=10)
    clock.advance(20)
    assert not store.complete("a", "w2", {"video": "other.mp4"})
    assert store.complete(
        "a", "w1", {"video": "a.mp4"}, timings={"sampling": 12.5}, reproducibility={"seed": 1}
    )
    record = store.get("a")
    assert record.status is JobStatus.COMPLETED
    assert record.output == {"video": "a.mp4"}
    assert record.timings == {"sampling": 12.5}
    assert record.reproducibility == {"seed": 1}
    assert (record.progress, record.eta_seconds) == (1.0, None)
    assert record.finished_at == T0 + 20
    assert record.expires_at == T0 + 20 + RETENTION
    assert record.lease_expires_at is None
    assert not store.complete("a", "w1", {"video": "again.mp4"})
    assert not store.fail("a", "w1", JobError("late", "x"))
    assert not store.heartbeat("a", "w1")
    assert store.get("a").output == {"video": "a.mp4"}
    assert store.in_progress_count() == 0


def test_repeating_the_same_finish_call_is_idempotent(store):
    # A client retry after a lost reply must not make the owner believe it lost the job.
    store.create(job("a"))
    store.create(job("b"))
    store.claim("a", "w1")
    assert store.complete("a", "w1", {"video": "a.mp4"}, timings={"mux": 1.0})
    assert store.complete("a", "w1", {"video": "a.mp4"}, timings={"mux": 1.0})
    assert not store.complete("a", "w1", {"video": "other.mp4"})
    assert not store.fail("a", "w1", JobError("model_error", "x"))
    assert store.get("a").timings == {"mux": 1.0}
    store.claim("b", "w1")
    error = JobError("model_error", "x")
    assert store.fail("b", "w1", error)
    assert store.fail("b", "w1", error)
    assert not store.fail("b", "w1", JobError("model_error", "y"))
    assert not store.complete("b", "w1", {"video": "b.mp4"})
    assert store.counts()[JobStatus.FAILED] == 1 and store.counts()[JobStatus.COMPLETED] == 1


def test_fail_with_a_typed_error(store):
    store.create(job("a"))
    store.claim("a", "w1")
    assert not store.fail("a", "w2", JobError("model_error", "no"))
    assert store.fail("a", "w1", JobError("invalid_audio", "the audio has no samples"))
    record = store.get("a")
    assert record.status is JobStatus.FAILED
    assert record.error == JobError("invalid_audio", "the audio has no samples")
    assert record.output is None
    assert record.expires_at is not None


def test_complete_after_losing_the_lease_is_refused(store, clock):
    store.create(job("a"))
    store.claim("a", "w1")
    clock.advance(LEASE + 1)
    taken = store.claim("a", "w2")  # a redelivered message after w1 went quiet
    assert taken.attempt == 2 and taken.lease_owner == "w2"
    assert not store.heartbeat("a", "w1")
    assert not store.complete("a", "w1", {"video": "w1.mp4"})
    assert store.complete("a", "w2", {"video": "w2.mp4"})
    assert store.get("a").output == {"video": "w2.mp4"}


def test_an_expired_lease_of_a_slow_but_alive_owner_can_still_finish(store, clock):
    store.create(job("a"))
    store.claim("a", "w1")
    clock.advance(LEASE + 1)  # nobody took the job over yet
    assert store.heartbeat("a", "w1")
    assert store.complete("a", "w1", {"video": "v"})


def test_retries_exhausted_on_claim(make_store, clock):
    store = make_store(max_attempts=2)
    store.create(job("a"))
    assert store.claim("a", "w1").attempt == 1
    clock.advance(LEASE + 1)
    assert store.claim("a", "w2").attempt == 2
    clock.advance(LEASE + 1)
    assert store.claim("a", "w3") is None
    record = store.get("a")
    assert record.status is JobStatus.FAILED
    assert record.error.code == RETRIES_EXHAUSTED
    assert record.attempt == 2
    assert record.lease_owner is None
    assert record.expires_at == clock.now + RETENTION
    assert not store.fail("a", "w2", JobError(RETRIES_EXHAUSTED, record.error.message))
    assert store.in_progress_count() == 0
    assert store.counts()[JobStatus.FAILED] == 1


def test_claim_next_takes_the_oldest_queued_job_whatever_the_message_names(store, clock):
    for rid in "abc":
        store.create(job(rid))
    store.claim("a", "w1")
    clock.advance(LEASE + 1)
    assert store.requeue_expired() == (["a"], [])
    # a's new message is behind b's and c's in the transport, but a keeps its place in the queue.
    taken = [store.claim_next(message, f"w-{message}") for message in "bca"]
    assert [record.request_id for record in taken[:2]] == ["a", "b"]
    assert taken[2].request_id == "c"
    assert store.queued_ids() == []
    assert store.claim_next("a", "w4") is None  # a surplus message: nothing left to run


def test_claim_next_skips_cancelled_and_exhausted_heads(make_store, clock):
    store = make_store(max_attempts=1)
    for rid in "abc":
        store.create(job(rid))
    store.cancel("a", "acme")
    store.claim("b", "w1")
    clock.advance(LEASE + 1)
    assert store.requeue_expired() == ([], ["b"])  # out of attempts: failed by the reaper
    assert store.claim_next("a", "w2").request_id == "c"
    assert status(store, "a") is JobStatus.CANCELLED and status(store, "b") is JobStatus.FAILED


def test_claim_next_with_an_empty_queue_takes_over_the_named_lapsed_lease(store, clock):
    store.create(job("a"))
    store.claim("a", "w1")
    assert store.claim_next("a", "w2") is None  # the lease is live
    clock.advance(LEASE + 1)
    record = store.claim_next("a", "w2")
    assert (record.request_id, record.attempt, record.lease_owner) == ("a", 2, "w2")


# -- reaper and release --------------------------------------------------------------------------------------


def test_reaper_requeues_expired_leases_in_original_order(store, clock):
    for rid in "abc":
        store.create(job(rid))
    store.claim("a", "w1")
    store.claim("b", "w2")
    clock.advance(30)
    store.heartbeat("b", "w2")
    clock.advance(LEASE - 29)  # a's lease is over, b's is not
    assert store.requeue_expired() == (["a"], [])
    record = store.get("a")
    assert record.status is JobStatus.IN_QUEUE
    assert record.lease_owner is None and record.started_at is None
    assert record.attempt == 1
    assert store.queued_ids() == ["a", "c"]
    assert status(store, "b") is JobStatus.IN_PROGRESS
    assert not store.heartbeat("a", "w1")
    assert store.claim("a", "w3").attempt == 2
    assert store.requeue_expired() == ([], [])


def test_reaper_fails_jobs_out_of_attempts(make_store, clock):
    store = make_store(max_attempts=1)
    store.create(job("a"))
    store.create(job("b"))
    store.claim("a", "w1")
    store.claim("b", "w1")
    store.complete("b", "w1", {"video": "b"})
    assert store.requeue_expired(now=clock.now + LEASE) == ([], ["a"])
    record = store.get("a")
    assert record.status is JobStatus.FAILED
    assert record.error.code == RETRIES_EXHAUSTED
    assert status(store, "b") is JobStatus.COMPLETED
    assert store.requeue_expired(now=clock.now + 10 * LEASE) == ([], [])


def test_reaper_respects_its_limit(store, clock):
    for rid in "abc":
        store.create(job(rid))
        store.claim(rid, "w1")
    clock.advance(LEASE)
    first, _ = store.requeue_expired(limit=2)
    second, _ = store.requeue_expired(limit=2)
    assert len(first) == 2 and len(second) == 1
    assert sorted(first + second) == ["a", "b", "c"]


def test_release_gives_the_attempt_back_and_keeps_queue_order(store, clock):
    for rid in "abc":
        store.create(job(rid))
    store.claim("a", "w1")
    assert not store.release("a", "w2")
    assert store.release("a", "w1")
    record = store.get("a")
    assert record.status is JobStatus.IN_QUEUE
    assert record.attempt == 0
    assert record.lease_owner is None
    assert store.queued_ids() == ["a", "b", "c"]
    assert not store.release("a", "w1")
    assert store.in_progress_count() == 0


def test_release_is_capped(make_store):
    store = make_store(max_attempts=1, max_releases=1)
    store.create(job("a"))
    store.claim("a", "w1")
    store.release("a", "w1")
    assert store.get("a").attempt == 0
    store.claim("a", "w1")
    store.release("a", "w1")  # beyond the cap: this time the attempt counts
    assert store.get("a").attempt == 1
    assert store.claim("a", "w1") is None
    record = store.get("a")
    assert record.status is JobStatus.FAILED and record.error.code == RETRIES_EXHAUSTED
    assert store.queued_count() == 0


# -- races ---------------------------------------------------------------------------------------------------


def run_together(workers: int, target) -> list:
    barrier = threading.Barrier(workers)
    results: list = [None] * workers

    def body(i: int) -> None:
        barrier.wait()
        results[i] = target(i)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    return results


def test_concurrent_claims_have_exactly_one_winner(store):
    ids = [f"j{i}" for i in range(20)]
    for rid in ids:
        store.create(job(rid))

    def claim_all(i: int) -> list[str]:
        return [rid for rid in ids if store.claim(rid, f"w{i}") is not None]

    won = run_together(6, claim_all)
    flat = [rid for wins in won for rid in wins]
    assert sorted(flat) == sorted(ids)  # every job claimed exactly once
    for i, wins in enumerate(won):
        for rid in wins:
            assert store.get(rid).lease_owner == f"w{i}"
            assert store.get(rid).attempt == 1


def test_concurrent_reclaims_of_an_expired_lease_have_one_winner(store, clock):
    store.create(job("a"))
    store.claim("a", "w0")
    clock.advance(LEASE + 1)
    results = run_together(6, lambda i: store.claim("a", f"w{i + 1}"))
    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    assert winners[0].attempt == 2
    assert store.get("a").lease_owner == winners[0].lease_owner


def test_cancel_racing_claim_has_one_outcome(store):
    ids = [f"j{i}" for i in range(20)]
    for rid in ids:
        store.create(job(rid))

    def cancel_or_claim(i: int) -> dict[str, bool]:
        outcome = {}
        for rid in ids:
            if i == 0:
                try:
                    store.cancel(rid, "acme")
                    outcome[rid] = True
                except CancelConflict:
                    outcome[rid] = False
            else:
                outcome[rid] = store.claim(rid, "w1") is not None
        return outcome

    cancelled, claimed = run_together(2, cancel_or_claim)
    for rid in ids:
        assert cancelled[rid] != claimed[rid]
        expected = JobStatus.CANCELLED if cancelled[rid] else JobStatus.IN_PROGRESS
        assert status(store, rid) is expected


# -- counts, retention, robustness ---------------------------------------------------------------------------


def test_counts_follow_every_transition(store):
    for rid in "abcdef":
        store.create(job(rid))
    store.cancel("a", "acme")
    store.claim("b", "w1")
    store.complete("b", "w1", {"video": "b"})
    store.claim("c", "w1")
    store.fail("c", "w1", JobError("model_error", "x"))
    store.claim("d", "w1")
    store.claim("e", "w1")
    store.release("e", "w1")
    assert store.counts() == {
        JobStatus.IN_QUEUE: 2,
        JobStatus.IN_PROGRESS: 1,
        JobStatus.COMPLETED: 1,
        JobStatus.FAILED: 1,
        JobStatus.CANCELLED: 1,
    }
    assert store.queued_count() == 2 and store.in_progress_count() == 1


def test_retention_lists_and_deletes_finished_jobs(store, clock):
    for rid in "abcd":
        store.create(job(rid))
    store.cancel("a", "acme")
    clock.advance(10)
    store.claim("b", "w1")
    store.complete("b", "w1", {"video": "b.mp4"})
    store.claim("c", "w1")
    store.fail("c", "w1", JobError("model_error", "x"))
    assert store.list_expired_results(now=T0 + RETENTION - 1) == []
    assert store.list_expired_results(now=T0 + RETENTION) == ["a"]
    clock.advance(RETENTION)
    expired = store.list_expired_results()
    assert expired == ["a", "b", "c"]
    assert store.list_expired_results(limit=1) == ["a"]
    assert store.get("b").is_expired(clock.now)
    for rid in expired:
        assert store.delete(rid)
    assert store.get("b") is None
    assert store.is_gone("b", "acme")
    assert not store.is_gone("b", "other")
    assert not store.is_gone("d", "acme")
    assert store.list_expired_results() == []
    assert store.counts()[JobStatus.COMPLETED] == 0
    assert not store.delete("b")


def test_delete_refuses_unfinished_jobs(store):
    store.create(job("a"))
    store.create(job("b"))
    store.claim("b", "w1")
    assert not store.delete("a")
    assert not store.delete("b")
    assert not store.delete("missing")
    assert store.queued_ids() == ["a"]
    assert status(store, "b") is JobStatus.IN_PROGRESS


def test_scripts_survive_a_script_cache_flush(store, client):
    # A restarted Redis has an empty script cache: the registered scripts must load themselves again.
    store.create(job("a"))
    client.script_flush()
    assert store.claim("a", "w1") is not None


def test_ping(store):
    assert store.ping()
    no_retry = Retry(NoBackoff(), 0)
    with redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, retry=no_retry) as dead:
        assert not JobStore(dead).ping()
