"""The dispatcher against a real Redis: every queued job gets a message, and dead samplers' jobs come back."""

from __future__ import annotations

import pytest
from api_fixtures import CrashingEngine, OkEngine, build_stack, redis_client

from serve.jobs import RETRIES_EXHAUSTED, EmbeddedRedis, JobStatus

GRACE = 10.0
LEASE = 60.0


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with EmbeddedRedis(tmp_path_factory.mktemp("redis")) as embedded:
        yield embedded


@pytest.fixture
def conn(server):
    client = redis_client(server.url)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
def stack(conn, tmp_path):
    return build_stack(conn, tmp_path, grace_seconds=GRACE, lease_seconds=LEASE, max_attempts=2)


def test_publish_clears_the_pending_mark(stack) -> None:
    request_id = stack.enqueue()
    assert stack.publisher.published == [request_id]
    assert stack.pending() == []
    report = stack.dispatcher.sweep()
    assert (report.republished, report.requeued, report.failed) == ([], [], [])
    assert stack.publisher.published == [request_id]


def test_unpublished_job_is_republished_after_the_grace(stack) -> None:
    request_id = stack.enqueue(publish=False)
    assert stack.pending() == [request_id]
    # Within the grace the ingress may still be about to publish it.
    stack.clock.advance(GRACE - 1)
    assert stack.dispatcher.sweep().republished == []
    assert stack.publisher.published == []

    stack.clock.advance(2)
    assert stack.dispatcher.sweep().republished == [request_id]
    assert stack.publisher.published == [request_id]
    assert stack.pending() == []
    assert stack.dispatcher.sweep().republished == []
    # The job runs normally from that message.
    assert stack.runner(OkEngine()).run(request_id) is JobStatus.COMPLETED


def test_pending_marks_of_jobs_no_longer_queued_are_dropped(stack) -> None:
    cancelled = stack.enqueue(publish=False)
    stack.store.cancel(cancelled, "alpha")
    started = stack.enqueue(publish=False)
    stack.store.claim(started, "worker-x")
    stack.dispatcher.mark_pending("never-created")  # the create after it failed (queue full, conflict)
    stack.clock.advance(GRACE + 1)
    report = stack.dispatcher.sweep()
    assert report.republished == []
    assert stack.publisher.published == []
    assert stack.pending() == []


def test_expired_lease_is_requeued_at_its_place_and_republished(stack) -> None:
    first = stack.enqueue()
    second = stack.enqueue()
    engine = CrashingEngine()
    assert stack.runner(engine).run(first) is None
    assert stack.store.get(first).status is JobStatus.IN_PROGRESS

    stack.clock.advance(LEASE / 2)
    assert stack.dispatcher.sweep().requeued == []  # a live lease is left alone

    stack.clock.advance(LEASE)
    report = stack.dispatcher.sweep()
    assert report.requeued == [first] and report.failed == []
    assert stack.publisher.published == [first, second, first]
    record = stack.store.get(first)
    assert record.status is JobStatus.IN_QUEUE and record.attempt == 1
    assert stack.store.queue_position(first) == 0 and stack.store.queue_position(second) == 1

    # The republished message runs it on a fresh execution.
    assert stack.runner(OkEngine(), "replica-2").run(first) is JobStatus.COMPLETED
    assert stack.store.get(first).attempt == 2


def test_exhausted_attempts_fail_with_retries_exhausted(stack) -> None:
    request_id = stack.enqueue()
    engine = CrashingEngine()
    reports = []
    for _ in range(2):  # max_attempts
        assert stack.runner(engine).run(request_id) is None
        stack.clock.advance(LEASE + 1)
        reports.append(stack.dispatcher.sweep())
    assert reports[0].requeued == [request_id]
    assert reports[1].requeued == [] and reports[1].failed == [request_id]
    assert engine.calls == 2
    assert stack.publisher.published == [request_id, request_id]  # not republished once failed
    record = stack.store.get(request_id)
    assert record.status is JobStatus.FAILED
    assert record.error.code == RETRIES_EXHAUSTED
    assert record.expires_at is not None
    # A late duplicate message does nothing.
    assert stack.runner(engine).run(request_id) is None
    assert engine.calls == 2


def test_only_one_replica_sweeps_at_a_time(stack, conn) -> None:
    request_id = stack.enqueue()
    stack.runner(CrashingEngine()).run(request_id)
    stack.clock.advance(LEASE + 1)
    lock = stack.dispatcher._sweep_lock
    conn.set(lock, "another-replica", px=30_000)
    report = stack.dispatcher.sweep()
    assert (report.republished, report.requeued, report.failed) == ([], [], [])
    assert stack.store.get(request_id).status is JobStatus.IN_PROGRESS
    assert conn.get(lock) == b"another-replica"  # somebody else's lock is not released

    conn.delete(lock)
    assert stack.dispatcher.sweep().requeued == [request_id]
    assert conn.get(lock) is None  # released after the sweep


def test_two_dispatchers_share_the_pending_set(stack, conn, tmp_path) -> None:
    # The ingress that wrote the record died; another replica's dispatcher publishes it.
    request_id = stack.enqueue(publish=False)
    other = build_stack(conn, tmp_path / "other", clock=stack.clock, grace_seconds=GRACE)
    stack.clock.advance(GRACE + 1)
    assert other.dispatcher.sweep().republished == [request_id]
    assert other.publisher.published == [request_id] and stack.publisher.published == []


def test_a_failed_republish_of_a_requeued_job_is_retried_by_the_next_sweep(stack) -> None:
    request_id = stack.enqueue()
    stack.runner(CrashingEngine()).run(request_id)
    stack.clock.advance(LEASE + 1)
    stack.publisher.broken = True
    with pytest.raises(ConnectionError):
        stack.dispatcher.sweep()
    assert stack.store.get(request_id).status is JobStatus.IN_QUEUE
    stack.publisher.broken = False
    stack.clock.advance(GRACE + 1)
    stack.dispatcher.sweep()
    assert stack.publisher.published == [request_id, request_id]
