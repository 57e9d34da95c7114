"""The job store against a real Redis server: every transition, fairness and caps across tenants, cancel of
running jobs, time limits, retention (also when Redis is full), races, and the record's size in Redis."""

from __future__ import annotations

import threading
from dataclasses import replace

import pytest

from serve.jobs.errors import (
    CancelConflict,
    IdempotencyConflict,
    JobNotFound,
    QueueFull,
    TenantQueueFull,
    UploadQuotaExceeded,
)
from serve.jobs.operations import Beat, QueuePolicy, TenantLimits
from serve.jobs.records import (
    RETRIES_EXHAUSTED,
    TIME_LIMIT,
    InputSource,
    JobError,
    JobRecord,
    JobSettings,
    JobStatus,
    StagedInput,
)
from serve.jobs.store import JobStore

T0 = 1_700_000_000.0
LEASE = 60.0
RETENTION = 3600.0
SETTINGS = JobSettings("a woman is talking", 720, 720, 125, 96860978, 7, 11.0, 1.0)


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make_store(redis_conn, clock):
    def make(**policy) -> JobStore:
        options = {"lease_seconds": LEASE, "retention_seconds": RETENTION, **policy}
        return JobStore(redis_conn, policy=QueuePolicy(**options), clock=clock)

    return make


@pytest.fixture
def store(make_store) -> JobStore:
    return make_store()


def job(request_id: str, tenant: str = "acme", prompt: str = SETTINGS.prompt) -> JobRecord:
    staged = {
        role: StagedInput(f"inputs/{tenant}/{request_id}/{role}", "ab" * 32, 1000, InputSource.DATA)
        for role in ("image", "audio")
    }
    settings = JobSettings(
        prompt,
        *(getattr(SETTINGS, name) for name in ("width", "height", "frames", "seed", "steps", "shift", "cfg")),
    )
    return JobRecord(request_id=request_id, tenant=tenant, settings=settings, inputs=staged)


def submit(store: JobStore, *request_ids: str, tenant: str = "acme") -> None:
    for request_id in request_ids:
        store.create(job(request_id, tenant))


def status(store: JobStore, request_id: str) -> JobStatus:
    return store.get(request_id).status


def run_order(store: JobStore, count: int) -> list[str]:
    """Claim and complete ``count`` jobs one after the other: the order the workers take them in."""
    order = []
    for index in range(count):
        record = store.claim_next(f"w{index}")
        order.append(record.request_id)
        assert store.complete(record.request_id, f"w{index}", f"outputs/x/{record.request_id}/r/video.mp4")
    return order


# -- the record ----------------------------------------------------------------------------------------------


def test_record_round_trips_through_the_redis_hash():
    record = job("a" * 32)
    record.error = JobError("invalid_audio", "no audio stream")
    record.timings = {"sampling": 1.5}
    assert JobRecord.from_redis_hash(record.to_redis_hash()) == record
    assert JobRecord.from_redis_hash({**record.to_redis_hash(), "_seq": "3", "future_field": "x"}) == record


@pytest.mark.parametrize(
    ("field", "value"), [("settings", "{not json"), ("inputs", '{"image": {}}'), ("attempt", "x")]
)
def test_an_unreadable_stored_field_is_named(field, value):
    with pytest.raises(ValueError, match=field):
        JobRecord.from_redis_hash({**job("a" * 32).to_redis_hash(), field: value})


def test_the_stored_record_holds_no_input_bytes_and_stays_small(store, redis_conn):
    """Defect: the record kept the client's references verbatim, so a data: URI of megabytes sat in Redis
    and every status poll read and parsed it. Now it holds the settings, and per input its key and hash."""
    longest_prompt = "ä" * 2000  # the API's cap, in two-byte characters
    store.create(job("a" * 32, prompt=longest_prompt))
    store.create(job("b" * 32))
    # MEMORY USAGE extrapolates from 5 random fields unless told to count them all (samples=0): the estimate
    # of the long-prompt record swung between 3 and 18 KB from run to run.
    # A few hundred bytes of fields; Redis stores a hash with values over 64 bytes as a hash table.
    assert redis_conn.memory_usage(store.keys.job("b" * 32), samples=0) < 4096
    # The prompt is the one setting of any length: its 4000 UTF-8 bytes bound a record at about 6 KB.
    assert redis_conn.memory_usage(store.keys.job("a" * 32), samples=0) < 8192
    stored = redis_conn.hgetall(store.keys.job("b" * 32))
    assert b"data:" not in b"".join(stored.values())


# -- submit and read -----------------------------------------------------------------------------------------


def test_create_stamps_a_queued_record(store, clock):
    record, created = store.create(job("a" * 32))
    assert created and record.status is JobStatus.IN_QUEUE and record.created_at == clock.now
    assert record.attempt == 0 and record.max_attempts == 3
    assert store.counts()[JobStatus.IN_QUEUE] == 1
    assert store.tenant_usage("acme") == {"queued": 1, "running": 0, "upload_bytes": 0}


def test_create_refuses_an_existing_request_id(store):
    submit(store, "a" * 32)
    with pytest.raises(ValueError, match="already exists"):
        store.create(job("a" * 32))


def test_get_is_tenant_scoped(store):
    submit(store, "a" * 32)
    assert store.get("a" * 32, "acme") is not None
    assert store.get("a" * 32, "other") is None
    assert store.get("f" * 32) is None


def test_idempotent_create_same_body_returns_the_first_job(store):
    first, created = store.create(job("a" * 32), "key-1", "hash-1")
    again, created_again = store.create(job("b" * 32), "key-1", "hash-1")
    assert created and not created_again and again.request_id == first.request_id
    with pytest.raises(IdempotencyConflict):
        store.create(job("c" * 32), "key-1", "hash-2")
    other, created_other = store.create(job("d" * 32, tenant="beta"), "key-1", "hash-1")
    assert created_other and other.request_id == "d" * 32  # keys are per tenant


def test_the_idempotency_key_of_a_deleted_job_is_free_again(store, clock):
    store.create(job("a" * 32), "key-1", "hash-1")
    store.cancel("a" * 32, "acme")
    clock.advance(RETENTION + 1)
    assert store.delete("a" * 32)
    record, created = store.create(job("b" * 32), "key-1", "hash-2")
    assert created and record.request_id == "b" * 32


def test_the_whole_queue_is_bounded(make_store):
    store = make_store(max_queued=2, tenant_max_queued=10)
    submit(store, "a" * 32, "b" * 32)
    with pytest.raises(QueueFull):
        store.create(job("c" * 32))


def test_a_tenant_over_its_queued_cap_is_refused_while_others_are_admitted(make_store):
    """Defect: the queue bound was global, so one tenant filling it got every other tenant 429s."""
    store = make_store(max_queued=100, tenant_max_queued=3)
    submit(store, *(c * 32 for c in "abc"), tenant="flood")
    with pytest.raises(TenantQueueFull) as refused:
        store.create(job("d" * 32, tenant="flood"))
    assert refused.value.cap == 3
    submit(store, "e" * 32, tenant="quiet")  # another tenant still gets in
    store.set_tenant_limits({"flood": TenantLimits(max_queued=5)})
    submit(store, "d" * 32, tenant="flood")  # its own, larger cap from the tokens file


# -- fairness ------------------------------------------------------------------------------------------------


def test_tenants_take_turns(store):
    """Defect: one FIFO across tenants, so a tenant with 50 queued jobs delayed another's single job behind
    all 50. Now tenants take turns: B's one job runs second."""
    submit(store, *(f"{i:032x}" for i in range(50)), tenant="A")
    submit(store, "b" * 32, tenant="B")
    order = run_order(store, 3)
    assert order == [f"{0:032x}", "b" * 32, f"{1:032x}"]


def test_three_tenants_round_robin_and_keep_their_own_order(store):
    submit(store, "a1".ljust(32, "0"), "a2".ljust(32, "0"), "a3".ljust(32, "0"), tenant="A")
    submit(store, "b1".ljust(32, "0"), "b2".ljust(32, "0"), tenant="B")
    submit(store, "c1".ljust(32, "0"), tenant="C")
    order = [request_id[:2] for request_id in run_order(store, 6)]
    assert order == ["a1", "b1", "c1", "a2", "b2", "a3"]


def test_queue_positions_count_the_turns_of_the_other_tenants(store):
    submit(store, *(f"{i:032x}" for i in range(5)), tenant="A")
    submit(store, "b1".ljust(32, "0"), "b2".ljust(32, "0"), tenant="B")
    positions = {
        request_id: store.queue_position(request_id)
        for request_id in (f"{4:032x}", "b1".ljust(32, "0"), "b2".ljust(32, "0"))
    }
    assert positions == {f"{4:032x}": 6, "b1".ljust(32, "0"): 1, "b2".ljust(32, "0"): 3}
    # and they are what happens
    order = run_order(store, 7)
    assert {request_id: order.index(request_id) for request_id in positions} == positions


def test_a_tenant_at_its_running_cap_waits_and_others_go_by(make_store):
    store = make_store(tenant_max_running=1)
    submit(store, "a1".ljust(32, "0"), "a2".ljust(32, "0"), tenant="A")
    submit(store, "b1".ljust(32, "0"), tenant="B")
    first = store.claim_next("w1")
    second = store.claim_next("w2")
    assert (first.request_id[:2], second.request_id[:2]) == ("a1", "b1")
    assert store.claim_next("w3") is None  # a2 waits: A has one running
    store.complete(first.request_id, "w1", "outputs/A/x/r/video.mp4")
    assert store.claim_next("w3").request_id[:2] == "a2"


# -- claims, leases, heartbeats ------------------------------------------------------------------------------


def test_claim_starts_an_attempt_under_a_lease(store, clock):
    submit(store, "a" * 32)
    record = store.claim_next("w1")
    assert record.status is JobStatus.IN_PROGRESS and record.attempt == 1
    assert record.lease_owner == "w1" and record.lease_expires_at == clock.now + LEASE
    assert store.claim_next("w2") is None
    assert store.tenant_usage("acme") == {"queued": 0, "running": 1, "upload_bytes": 0}


def test_heartbeat_extends_the_lease_unless_the_job_stalled(store, clock):
    submit(store, "a" * 32)
    store.claim_next("w1")
    clock.advance(10)
    assert store.heartbeat("a" * 32, "w1", progress=0.25, eta_seconds=30.0) is Beat.OK
    record = store.get("a" * 32)
    assert (record.progress, record.eta_seconds, record.lease_expires_at) == (0.25, 30.0, clock.now + LEASE)
    clock.advance(10)
    assert store.heartbeat("a" * 32, "w1", extend=False) is Beat.OK
    assert store.get("a" * 32).lease_expires_at == clock.now - 10 + LEASE  # not extended
    assert store.heartbeat("a" * 32, "intruder") is Beat.LOST


def test_an_expired_lease_is_requeued_at_its_place_and_the_attempt_counts(store, clock):
    submit(store, "a" * 32, "b" * 32)
    store.claim_next("w1")
    clock.advance(LEASE + 1)
    report = store.reap()
    assert report.requeued == ["a" * 32]
    assert store.queue_position("a" * 32) == 0  # ahead of b again
    retry = store.claim_next("w2")
    assert (retry.request_id, retry.attempt) == ("a" * 32, 2)
    assert store.heartbeat("a" * 32, "w1") is Beat.LOST  # the stale worker is told


def test_attempts_run_out(make_store, clock):
    store = make_store(max_attempts=2)
    submit(store, "a" * 32)
    for worker in ("w1", "w2"):
        assert store.claim_next(worker) is not None
        clock.advance(LEASE + 1)
        report = store.reap()
    assert report.failed == ["a" * 32]
    record = store.get("a" * 32)
    assert record.status is JobStatus.FAILED and record.error.code == RETRIES_EXHAUSTED


def test_release_gives_the_attempt_back_and_keeps_queue_order(store):
    submit(store, "a" * 32, "b" * 32)
    store.claim_next("w1")
    assert store.release("a" * 32, "w1")
    assert store.queue_position("a" * 32) == 0 and store.get("a" * 32).attempt == 0
    assert not store.release("a" * 32, "w1")


def test_concurrent_claims_have_exactly_one_winner(store):
    submit(store, "a" * 32)
    winners: list[str] = []
    barrier = threading.Barrier(8)

    def claim(worker: str) -> None:
        barrier.wait()
        if store.claim_next(worker) is not None:
            winners.append(worker)

    threads = [threading.Thread(target=claim, args=(f"w{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(winners) == 1


# -- results: exactly one run's output -----------------------------------------------------------------------


def test_complete_by_the_owner_records_its_run(store, clock):
    submit(store, "a" * 32)
    store.claim_next("w1")
    assert store.complete("a" * 32, "w1", "outputs/acme/a/run1/video.mp4", {"sampling": 2.0}, {"seed": 1})
    record = store.get("a" * 32)
    assert record.status is JobStatus.COMPLETED and record.output_key == "outputs/acme/a/run1/video.mp4"
    assert record.expires_at == clock.now + RETENTION and record.progress == 1.0
    assert store.complete("a" * 32, "w1", "outputs/acme/a/run1/video.mp4")  # a repeated call: same answer
    assert store.tenant_usage("acme")["running"] == 0


def test_a_stale_run_cannot_replace_the_winners_output(store, clock):
    """Defect: the output key was fixed per job, so a worker that missed its lease and finished late
    replaced the MP4 the winning run had published. Now the winner's key is recorded and the stale run's
    complete is refused (its runner deletes what it wrote)."""
    submit(store, "a" * 32)
    store.claim_next("stale")
    clock.advance(LEASE + 1)
    store.reap()
    store.claim_next("winner")
    assert store.complete("a" * 32, "winner", "outputs/acme/a/winner/video.mp4")
    assert not store.complete("a" * 32, "stale", "outputs/acme/a/stale/video.mp4")
    assert not store.fail("a" * 32, "stale", JobError("x", "y"))
    assert store.get("a" * 32).output_key == "outputs/acme/a/winner/video.mp4"


# -- cancel --------------------------------------------------------------------------------------------------


def test_cancel_a_queued_job_means_it_never_runs(store):
    submit(store, "a" * 32)
    outcome = store.cancel("a" * 32, "acme")
    assert outcome.record.status is JobStatus.CANCELLED and not outcome.pending
    assert store.claim_next("w1") is None
    assert store.cancel("a" * 32, "acme").record.status is JobStatus.CANCELLED  # twice: harmless
    assert store.tenant_usage("acme")["queued"] == 0


def test_cancel_of_a_running_job_is_seen_by_its_worker(store):
    """Defect: cancel answered 409 for running jobs. Now the next heartbeat tells the worker to stop, and the
    worker ends the job cancelled."""
    submit(store, "a" * 32)
    store.claim_next("w1")
    outcome = store.cancel("a" * 32, "acme")
    assert (
        outcome.pending and outcome.record.status is JobStatus.IN_PROGRESS and outcome.record.cancel_requested
    )
    assert store.heartbeat("a" * 32, "w1") is Beat.CANCEL
    assert store.finish_cancelled("a" * 32, "w1")
    record = store.get("a" * 32)
    assert record.status is JobStatus.CANCELLED and record.output_key is None
    assert store.tenant_usage("acme")["running"] == 0


def test_a_completion_after_a_cancel_ends_the_job_cancelled(store):
    """The cancel was answered 202 before the run's last report: the run's completion must not win."""
    submit(store, "a" * 32)
    store.claim_next("w1")
    assert store.cancel("a" * 32, "acme").pending
    assert store.complete("a" * 32, "w1", "outputs/acme/a/r/video.mp4") is JobStatus.CANCELLED
    assert store.complete("a" * 32, "w1", "outputs/acme/a/r/video.mp4") is JobStatus.CANCELLED  # a retry
    record = store.get("a" * 32)
    assert record.status is JobStatus.CANCELLED and record.output_key is None
    assert store.counts()[JobStatus.CANCELLED] == 1 and store.tenant_usage("acme")["running"] == 0


def test_a_cancelled_job_whose_worker_is_gone_is_ended_by_the_reaper(store, clock):
    submit(store, "a" * 32)
    store.claim_next("w1")
    store.cancel("a" * 32, "acme")
    clock.advance(LEASE + 1)
    assert store.reap().cancelled == ["a" * 32]
    assert status(store, "a" * 32) is JobStatus.CANCELLED


def test_a_release_of_a_cancelled_job_ends_it(store):
    submit(store, "a" * 32)
    store.claim_next("w1")
    store.cancel("a" * 32, "acme")
    assert store.release("a" * 32, "w1")
    assert status(store, "a" * 32) is JobStatus.CANCELLED


def test_finished_jobs_cannot_be_cancelled_and_foreign_ones_are_not_found(store):
    submit(store, "a" * 32)
    store.claim_next("w1")
    store.complete("a" * 32, "w1", "outputs/acme/a/r/video.mp4")
    with pytest.raises(CancelConflict):
        store.cancel("a" * 32, "acme")
    with pytest.raises(JobNotFound):
        store.cancel("a" * 32, "other")


def test_cancel_racing_claim_has_one_outcome(store):
    for attempt in range(20):
        request_id = f"{attempt:032x}"
        submit(store, request_id)
        results: dict[str, object] = {}
        barrier = threading.Barrier(2)

        def claim(barrier: threading.Barrier = barrier, results: dict = results) -> None:
            barrier.wait()
            results["claim"] = store.claim_next("w")

        def cancel(
            request_id: str = request_id, barrier: threading.Barrier = barrier, results: dict = results
        ) -> None:
            barrier.wait()
            results["cancel"] = store.cancel(request_id, "acme")

        threads = [threading.Thread(target=claim), threading.Thread(target=cancel)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        claimed = results["claim"] is not None
        assert claimed == results["cancel"].pending  # claimed first: the cancel waits for the worker
        if claimed:
            store.finish_cancelled(request_id, "w")
        assert status(store, request_id) is JobStatus.CANCELLED


# -- time limits ---------------------------------------------------------------------------------------------


def test_a_run_past_its_time_limit_is_told_to_stop(make_store, clock):
    """Defect: no maximum run time, so a run that never ends held its replica forever."""
    store = make_store(max_run_seconds=300.0)
    submit(store, "a" * 32)
    assert store.claim_next("w1").run_deadline_at == clock.now + 300
    clock.advance(301)
    assert store.heartbeat("a" * 32, "w1") is Beat.TIME_LIMIT


def test_a_hung_run_past_its_time_limit_is_failed_by_the_reaper(make_store, clock):
    store = make_store(max_run_seconds=300.0, lease_seconds=600.0)
    submit(store, "a" * 32)
    store.claim_next("w1")
    clock.advance(301)
    assert store.reap().timed_out == ["a" * 32]
    record = store.get("a" * 32)
    assert record.status is JobStatus.FAILED and record.error.code == TIME_LIMIT
    assert not store.complete("a" * 32, "w1", "outputs/acme/a/r/video.mp4")  # its late result is refused


# -- retention -----------------------------------------------------------------------------------------------


def test_retention_lists_and_deletes_finished_jobs(store, clock):
    submit(store, "a" * 32, "b" * 32)
    store.cancel("a" * 32, "acme")
    assert store.expired_results() == []
    clock.advance(RETENTION + 1)
    assert store.expired_results() == ["a" * 32]
    assert not store.delete("b" * 32)  # still queued: never deleted
    assert store.delete("a" * 32) and store.get("a" * 32) is None
    assert redis_tombstone(store, "a" * 32) == b"acme"
    assert store.counts()[JobStatus.CANCELLED] == 0


def redis_tombstone(store: JobStore, request_id: str) -> bytes | None:
    return store._redis.get(store.keys.gone(request_id))


def test_retention_deletes_records_when_redis_is_full(store, clock, redis_conn):
    """Defect: with maxmemory and noeviction, a full Redis refused every write, the retention sweep's too,
    so nothing could ever free it. Deleting frees memory before it writes, so it runs."""
    submit(store, *(f"{i:032x}" for i in range(20)))
    for i in range(20):
        store.cancel(f"{i:032x}", "acme")
    used = redis_conn.info("memory")["used_memory"]
    redis_conn.config_set("maxmemory-policy", "noeviction")
    redis_conn.config_set("maxmemory", str(used // 2))
    try:
        with pytest.raises(Exception, match="OOM"):
            store.create(job("f" * 32))  # full: writes are refused
        clock.advance(RETENTION + 1)
        deleted = [request_id for request_id in store.expired_results() if store.delete(request_id)]
        assert len(deleted) == 20
    finally:
        redis_conn.config_set("maxmemory", "0")


# -- uploads -------------------------------------------------------------------------------------------------


def test_uploads_count_against_the_tenants_quota_until_they_expire(make_store, clock):
    """Defect: uploads had no per-tenant count or byte quota."""
    store = make_store(tenant_max_upload_bytes=1000)
    store.reserve_upload("acme", "file_a", 600)
    with pytest.raises(UploadQuotaExceeded) as refused:
        store.reserve_upload("acme", "file_b", 500)
    assert (refused.value.quota_bytes, refused.value.used_bytes) == (1000, 600)
    store.reserve_upload("other", "file_c", 900)  # another tenant's quota
    clock.advance(RETENTION + 1)
    assert sorted(store.expired_uploads()) == [("acme", "file_a"), ("other", "file_c")]
    assert store.forget_upload("acme", "file_a") == 600
    store.reserve_upload("acme", "file_b", 500)
    assert store.tenant_usage("acme")["upload_bytes"] == 500


# -- housekeeping --------------------------------------------------------------------------------------------


def test_counts_follow_every_transition(store, clock):
    submit(store, "a" * 32, "b" * 32, "c" * 32)
    store.cancel("c" * 32, "acme")
    store.claim_next("w1")
    counts = store.counts()
    assert (counts[JobStatus.IN_QUEUE], counts[JobStatus.IN_PROGRESS], counts[JobStatus.CANCELLED]) == (
        1,
        1,
        1,
    )
    store.fail("a" * 32, "w1", JobError("invalid_audio", "x"))
    assert store.counts()[JobStatus.FAILED] == 1 and store.counts()[JobStatus.IN_PROGRESS] == 0


def test_draining_flag(store):
    store.set_draining(30)
    assert store.draining_retry_after() == 30
    store.set_draining(None)
    assert store.draining_retry_after() is None
    with pytest.raises(ValueError, match="positive"):
        store.set_draining(0)


def test_scripts_survive_a_script_cache_flush(store, redis_conn):
    redis_conn.script_flush()
    submit(store, "a" * 32)
    assert store.claim_next("w1") is not None


def test_namespaces_are_isolated(redis_conn, clock):
    first = JobStore(redis_conn, namespace="one", clock=clock)
    second = JobStore(redis_conn, namespace="two", clock=clock)
    submit(first, "a" * 32)
    assert second.get("a" * 32) is None and second.claim_next("w") is None


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"lease_seconds": 0}, "lease_seconds"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_run_seconds": -1}, "max_run_seconds"),
    ],
)
def test_policy_refuses_bad_settings(options, match):
    with pytest.raises(ValueError, match=match):
        QueuePolicy(**options)


def test_beats_that_repeat_the_progress_log_no_change_and_send_no_progress_webhook(store, redis_conn):
    store.create(replace(job("a" * 32), webhook="https://hooks.example/x", webhook_events="progress"))
    worker = "replica-1:run1"
    store.claim_next(worker)
    events, due = store.keys.events("a" * 32), store.keys.webhook_due
    logged_before = redis_conn.xlen(events)
    for eta in (9.0, 8.0, 7.0):  # the lease thread's beats, and steps longer than a beat: only the ETA moves
        store.heartbeat("a" * 32, worker, progress=0.25, eta_seconds=eta)
    assert redis_conn.xlen(events) == logged_before + 1 and redis_conn.zcard(due) == 1
    assert store.get("a" * 32).eta_seconds == 7.0
    store.heartbeat("a" * 32, worker, progress=0.5, eta_seconds=6.0)
    assert redis_conn.xlen(events) == logged_before + 2 and redis_conn.zcard(due) == 2


def test_every_change_is_logged_in_the_jobs_event_stream_and_deleted_with_it(store, clock, redis_conn):
    submit(store, "a" * 32)
    worker = "replica-1:run1"
    store.claim_next(worker)
    store.heartbeat("a" * 32, worker)  # a lease renewal only: no change a client sees
    store.heartbeat("a" * 32, worker, progress=0.5, eta_seconds=3.0)
    store.cancel("a" * 32, "acme")
    store.finish_cancelled("a" * 32, worker)
    events = store.keys.events("a" * 32)
    logged = [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in redis_conn.xrange(events)]
    assert [(e["status"], e.get("progress"), e.get("cancel_requested")) for e in logged] == [
        ("in_queue", "0.0", "0"),
        ("in_progress", "0.0", "0"),
        ("in_progress", "0.5", "0"),
        ("in_progress", "0.5", "1"),
        ("cancelled", "0.5", "1"),
    ]
    assert logged[2]["eta_seconds"] == "3.0" and "eta_seconds" not in logged[-1]
    clock.advance(RETENTION + 1)
    assert store.delete("a" * 32)
    assert not redis_conn.exists(events)
