"""The job runner against a real Redis and local storage, driven by the test with fake engines."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import av
import pytest
from api_fixtures import (
    CrashingEngine,
    FailingEngine,
    OkEngine,
    SlowEngine,
    build_stack,
    png_bytes,
    redis_client,
    run_in_thread,
    wait_until,
    wav_bytes,
)

from pipeline.errors import ImageError
from serve.jobs import EmbeddedRedis, JobStatus
from serve.jobs.runner import EngineOutput, ProgressFn
from serve.storage import output_key

LEASE = 60.0
# Heartbeats come every third of the lease: a short one makes them frequent enough to watch.
SHORT_LEASE = 0.3


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
    return build_stack(conn, tmp_path, lease_seconds=LEASE)


@pytest.fixture
def fast_stack(conn, tmp_path):
    return build_stack(conn, tmp_path, lease_seconds=SHORT_LEASE)


def test_a_job_runs_to_completion(stack) -> None:
    request_id = stack.enqueue()
    engine = OkEngine()
    assert stack.runner(engine).run(request_id) is JobStatus.COMPLETED

    params, image, audio = engine.seen[0]
    assert (image, audio) == (png_bytes(), wav_bytes())
    assert (params["width"], params["height"], params["steps"]) == (720, 720, 7)
    record = stack.store.get(request_id)
    assert record.status is JobStatus.COMPLETED and record.progress == 1.0
    assert record.output == {"video": output_key("alpha", request_id)}
    with av.open(io.BytesIO(stack.storage.get_bytes(record.output["video"]))) as container:
        assert container.streams.video[0].frames == 3
    # The submit's fetch time plus the runner's own input read; the engine's stages; the upload.
    assert record.timings["fetch_inputs"] >= 0.1
    assert record.timings["sampling"] == 0.3 and record.timings["upload"] >= 0
    assert record.reproducibility == {"seed": 96860978, "output_size": "720x720"}
    assert stack.metrics.counter("jobs") == {"completed": 1.0}
    assert "sampling" in stack.metrics.histogram("stage_duration_seconds", (1.0,))


def test_a_second_delivery_of_a_finished_job_is_skipped(stack) -> None:
    request_id = stack.enqueue()
    engine = OkEngine()
    assert stack.runner(engine).run(request_id) is JobStatus.COMPLETED
    video = stack.storage.get_bytes(output_key("alpha", request_id))
    assert stack.runner(engine, "replica-2").run(request_id) is None
    assert engine.calls == 1
    assert stack.storage.get_bytes(output_key("alpha", request_id)) == video
    assert stack.metrics.counter("jobs") == {"completed": 1.0}


def test_a_duplicate_delivery_while_the_job_runs_is_skipped(fast_stack) -> None:
    stack = fast_stack
    request_id = stack.enqueue()
    engine = SlowEngine()
    thread, outcome = run_in_thread(lambda: stack.runner(engine, "replica-1").run(request_id))
    try:
        assert engine.started.wait(5)
        # Another replica and the same replica both receive the message again.
        assert stack.runner(engine, "replica-2").run(request_id) is None
        assert stack.runner(engine, "replica-1").run(request_id) is None
    finally:
        engine.release.set()
        thread.join(10)
    assert outcome == [JobStatus.COMPLETED]
    assert engine.calls == 1
    assert stack.store.get(request_id).attempt == 1


def test_progress_and_eta_reach_the_store(fast_stack) -> None:
    stack = fast_stack
    request_id = stack.enqueue()
    engine = SlowEngine(fraction=0.4, eta=12.5)
    thread, outcome = run_in_thread(lambda: stack.runner(engine).run(request_id))
    try:
        wait_until(lambda: stack.store.get(request_id).progress == 0.4)
        record = stack.store.get(request_id)
        assert record.eta_seconds == 12.5 and record.status is JobStatus.IN_PROGRESS
        # The heartbeat keeps the lease ahead of the (frozen) clock.
        assert record.lease_expires_at == pytest.approx(stack.clock() + SHORT_LEASE)
    finally:
        engine.release.set()
        thread.join(10)
    assert outcome == [JobStatus.COMPLETED]
    assert stack.store.get(request_id).eta_seconds is None


def test_a_pipeline_error_fails_the_job_at_once(stack) -> None:
    request_id = stack.enqueue()
    engine = FailingEngine(ImageError("284_image: no face found"))
    assert stack.runner(engine).run(request_id) is JobStatus.FAILED
    record = stack.store.get(request_id)
    assert record.status is JobStatus.FAILED
    assert (record.error.code, record.error.message) == ("invalid_image", "284_image: no face found")
    assert record.output is None
    # No retry: a further delivery does not run it.
    assert stack.runner(engine).run(request_id) is None
    assert engine.calls == 1
    assert stack.metrics.counter("jobs") == {"failed": 1.0}


def test_an_unexpected_error_leaves_the_job_to_its_lease(stack) -> None:
    request_id = stack.enqueue()
    crashing = CrashingEngine()
    assert stack.runner(crashing).run(request_id) is None
    record = stack.store.get(request_id)
    assert record.status is JobStatus.IN_PROGRESS and record.attempt == 1 and record.error is None
    assert stack.metrics.counter("jobs") == {}
    # Until the lease expires nobody else runs it.
    assert stack.runner(crashing, "replica-2").run(request_id) is None
    assert crashing.calls == 1

    stack.clock.advance(LEASE + 1)
    assert stack.dispatcher.sweep().requeued == [request_id]
    assert stack.publisher.published == [request_id, request_id]
    assert stack.runner(OkEngine(), "replica-2").run(request_id) is JobStatus.COMPLETED
    assert stack.store.get(request_id).attempt == 2


def test_a_lost_lease_stops_the_run_without_completing(fast_stack) -> None:
    stack = fast_stack
    request_id = stack.enqueue()
    slow = SlowEngine()
    thread, outcome = run_in_thread(lambda: stack.runner(slow, "replica-1").run(request_id))
    try:
        assert slow.started.wait(5)
        # The reaper took the job back (as if replica-1 had stopped heartbeating), and replica-2 ran it.
        assert stack.store.requeue_expired(now=stack.clock() + 1000) == ([request_id], [])
        assert stack.runner(OkEngine(), "replica-2").run(request_id) is JobStatus.COMPLETED
        thread.join(5)
        assert not thread.is_alive()
    finally:
        slow.release.set()
        thread.join(5)
    assert outcome == [None]
    assert slow.finished == 0
    record = stack.store.get(request_id)
    assert record.status is JobStatus.COMPLETED and record.lease_owner.startswith("replica-2:")
    assert stack.metrics.counter("jobs") == {"completed": 1.0}


class StolenEngine:
    """Loses its lease to another execution while generating, and finishes without reporting progress."""

    def __init__(self, stack: Any, request_id: str) -> None:
        self.stack, self.request_id = stack, request_id

    def run(
        self, params: dict[str, Any], image: bytes, audio: bytes, out_path: Path, progress: ProgressFn
    ) -> EngineOutput:
        self.stack.store.requeue_expired(now=self.stack.clock() + 1000)
        assert self.stack.store.claim(self.request_id, "replica-2:other") is not None
        OkEngine().run(params, image, audio, out_path, lambda fraction, eta: None)
        return EngineOutput()


def test_a_result_made_after_the_lease_was_lost_is_not_published(stack) -> None:
    request_id = stack.enqueue()
    assert stack.runner(StolenEngine(stack, request_id)).run(request_id) is None
    record = stack.store.get(request_id)
    assert record.status is JobStatus.IN_PROGRESS and record.lease_owner == "replica-2:other"
    assert record.output is None
    assert stack.metrics.counter("jobs") == {}


class StolenThenFailingEngine(StolenEngine):
    def run(
        self, params: dict[str, Any], image: bytes, audio: bytes, out_path: Path, progress: ProgressFn
    ) -> EngineOutput:
        self.stack.store.requeue_expired(now=self.stack.clock() + 1000)
        assert self.stack.store.claim(self.request_id, "replica-2:other") is not None
        raise ImageError("284_image: unreadable")


def test_a_failure_after_the_lease_was_lost_is_not_reported(stack) -> None:
    request_id = stack.enqueue()
    assert stack.runner(StolenThenFailingEngine(stack, request_id)).run(request_id) is None
    assert stack.store.get(request_id).status is JobStatus.IN_PROGRESS
    assert stack.metrics.counter("jobs") == {}


def test_a_graceful_stop_hands_the_job_back(stack) -> None:
    first = stack.enqueue()
    second = stack.enqueue()
    slow = SlowEngine()
    runner = stack.runner(slow)
    thread, outcome = run_in_thread(lambda: runner.run(first))
    try:
        assert slow.started.wait(5)
        assert runner.running == 1
        runner.request_stop()
        thread.join(5)
    finally:
        slow.release.set()
        thread.join(5)
    assert outcome == [JobStatus.IN_QUEUE]
    assert runner.running == 0 and slow.finished == 0
    record = stack.store.get(first)
    assert record.status is JobStatus.IN_QUEUE
    assert record.attempt == 0  # a graceful hand-back gives the attempt back
    assert stack.store.queue_position(first) == 0 and stack.store.queue_position(second) == 1
    assert stack.publisher.published == [first, second, first]

    # A stopping runner takes no new job; it puts the message back.
    assert runner.run(second) is None
    assert stack.store.get(second).status is JobStatus.IN_QUEUE
    assert stack.publisher.published[-1] == second

    assert stack.runner(OkEngine(), "replica-2").run(first) is JobStatus.COMPLETED
    assert stack.store.get(first).attempt == 1


def test_a_cancelled_job_never_runs(stack) -> None:
    request_id = stack.enqueue()
    stack.store.cancel(request_id, "alpha")
    engine = OkEngine()
    assert stack.runner(engine).run(request_id) is None
    assert engine.calls == 0
    assert stack.store.get(request_id).status is JobStatus.CANCELLED
    assert not stack.storage.exists(output_key("alpha", request_id))


def test_an_unknown_job_is_skipped(stack) -> None:
    engine = OkEngine()
    assert stack.runner(engine).run("0" * 32) is None
    assert engine.calls == 0
