"""One job's run on a real Redis with fake engines: completion, progress, failures, leases lost to another run
(whose output must never be shown), cancels of running jobs, time limits, stalls and graceful stops; and the
worker loop that claims jobs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import av
import pytest
import redis
import torch
from api_fixtures import (
    CrashingEngine,
    FailingEngine,
    HangingEngine,
    OkEngine,
    SlowEngine,
    build_stack,
    run_in_thread,
    wait_until,
)

from pipeline.errors import ImageError
from serve.jobs.records import INPUTS_MISSING, RETRIES_EXHAUSTED, TIME_LIMIT, JobSettings, JobStatus
from serve.jobs.runner import DependencyFailed, EngineOutput, Inputs, ProgressFn
from serve.jobs.worker import CRASHED_JOBS_UNHEALTHY, JobWorker
from serve.storage import output_key

LEASE = 60.0


@pytest.fixture
def stack(redis_conn, tmp_path):
    return build_stack(redis_conn, tmp_path, lease_seconds=LEASE)


@pytest.fixture
def fast_stack(redis_conn, tmp_path):
    """A 0.3 s lease: the heartbeat thread beats every 0.1 s."""
    return build_stack(redis_conn, tmp_path, lease_seconds=0.3)


def test_a_job_runs_to_completion(stack) -> None:
    request_id = stack.enqueue()
    engine = OkEngine()
    assert stack.claim_and_run(engine) is JobStatus.COMPLETED
    settings, inputs = engine.seen[0]
    assert (settings.width, settings.height, settings.steps) == (720, 720, 7)
    assert set(inputs) == {"image", "audio"} and all(inputs.values())
    record = stack.store.get(request_id)
    assert record.status is JobStatus.COMPLETED and record.progress == 1.0
    assert record.output_key == f"outputs/alpha/{request_id}/run1/video.mp4"
    with av.open(str(Path(stack.config.storage.root) / record.output_key)) as container:
        assert container.streams.video and container.streams.audio
    assert {"fetch_inputs", "sampling", "upload"} <= set(record.timings)
    assert stack.metrics.counter("jobs") == {"completed": 1.0}


def test_progress_and_eta_reach_the_store(fast_stack) -> None:
    stack = fast_stack
    request_id = stack.enqueue()
    slow = SlowEngine(fraction=0.25, eta=30.0)
    thread, _ = run_in_thread(lambda: stack.claim_and_run(slow))
    try:
        wait_until(lambda: stack.store.get(request_id).eta_seconds == 30.0)
        assert stack.store.get(request_id).progress == 0.25
    finally:
        slow.release.set()
        thread.join(5)


def test_a_pipeline_error_fails_the_job_at_once(stack) -> None:
    request_id = stack.enqueue()
    assert stack.claim_and_run(FailingEngine(ImageError("284_image: unreadable"))) is JobStatus.FAILED
    record = stack.store.get(request_id)
    assert record.status is JobStatus.FAILED and record.error.code == "invalid_image"
    assert record.attempt == 1 and stack.metrics.counter("jobs") == {"failed": 1.0}


def test_an_unexpected_error_leaves_the_job_to_its_lease(stack) -> None:
    request_id = stack.enqueue()
    assert stack.claim_and_run(CrashingEngine()) is None
    record = stack.store.get(request_id)
    assert record.status is JobStatus.IN_PROGRESS and record.error is None
    assert stack.store.claim_next("replica-2:a") is None  # until the lease expires nobody else runs it
    stack.clock.advance(LEASE + 1)
    assert stack.store.reap().requeued == [request_id]
    assert stack.claim_and_run(OkEngine(), "replica-2:run2") is JobStatus.COMPLETED
    assert stack.store.get(request_id).attempt == 2


def test_attempts_run_out_on_a_job_that_crashes_every_time(stack) -> None:
    request_id = stack.enqueue()
    for attempt in range(3):
        stack.claim_and_run(CrashingEngine(), f"replica-{attempt}:run{attempt}")
        stack.clock.advance(LEASE + 1)
        stack.store.reap()
    record = stack.store.get(request_id)
    assert record.status is JobStatus.FAILED and record.error.code == RETRIES_EXHAUSTED


def test_a_redis_blip_as_the_run_ends_does_not_throw_the_finished_run_away(stack, monkeypatch) -> None:
    request_id = stack.enqueue()
    complete, calls = stack.store.complete, []

    def reset_once(*args, **kwargs):
        calls.append(args)
        if len(calls) == 1:
            raise redis.ConnectionError("Connection reset by peer")
        return complete(*args, **kwargs)

    monkeypatch.setattr(stack.store, "complete", reset_once)
    assert stack.claim_and_run(OkEngine()) is JobStatus.COMPLETED
    record = stack.store.get(request_id)
    assert len(calls) == 2 and record.attempt == 1
    assert stack.objects(f"outputs/alpha/{request_id}") == [record.output_key]


def test_the_winning_run_deletes_the_video_a_killed_run_left_unpublished(stack) -> None:
    request_id = stack.enqueue()
    # A replica killed between its upload and its complete (attempt 1) left this; no record names it.
    orphan = output_key("alpha", request_id, "killedrun")
    stack.storage.put_bytes(orphan, b"an unpublished video", "video/mp4")
    assert stack.claim_and_run(OkEngine()) is JobStatus.COMPLETED
    assert stack.objects(f"outputs/alpha/{request_id}") == [stack.store.get(request_id).output_key]


def test_a_job_whose_inputs_are_gone_fails_at_once(stack) -> None:
    request_id = stack.enqueue()
    stack.storage.delete(stack.store.get(request_id).inputs["audio"].key)
    engine = OkEngine()
    assert stack.claim_and_run(engine) is JobStatus.FAILED
    record = stack.store.get(request_id)
    assert record.error.code == INPUTS_MISSING and "audio" in record.error.message
    assert (record.attempt, engine.calls) == (1, 0)


class StolenEngine:
    """Loses its lease to another run while generating (as if paused past its lease), which completes the job
    first; then finishes its own video."""

    def __init__(self, stack: Any) -> None:
        self.stack = stack

    def run(
        self, settings: JobSettings, inputs: Inputs, out_path: Path, progress: ProgressFn
    ) -> EngineOutput:
        self.stack.clock.advance(LEASE + 1)
        self.stack.store.reap()
        assert self.stack.claim_and_run(OkEngine(), "replica-2:winner") is JobStatus.COMPLETED
        return OkEngine().run(settings, inputs, out_path, lambda fraction, eta: None)


def test_a_stale_run_never_replaces_the_winners_output(stack) -> None:
    """Defect: every run wrote the job's one output key, so a run that lost its lease and finished late
    replaced the video the winning run had published. Now the stale run's complete is refused and its own
    object deleted: the job shows the winner's video, and only that one is stored."""
    request_id = stack.enqueue()
    assert stack.claim_and_run(StolenEngine(stack), "replica-1:stale") is None
    record = stack.store.get(request_id)
    assert record.status is JobStatus.COMPLETED
    assert record.output_key == f"outputs/alpha/{request_id}/winner/video.mp4"
    assert stack.objects("outputs") == [record.output_key]
    assert stack.metrics.counter("jobs") == {"completed": 1.0}


class StolenThenFailingEngine(StolenEngine):
    def run(
        self, settings: JobSettings, inputs: Inputs, out_path: Path, progress: ProgressFn
    ) -> EngineOutput:
        super().run(settings, inputs, out_path, progress)
        raise ImageError("284_image: unreadable")


def test_a_failure_after_the_lease_was_lost_is_not_reported(stack) -> None:
    request_id = stack.enqueue()
    assert stack.claim_and_run(StolenThenFailingEngine(stack), "replica-1:stale") is None
    assert stack.store.get(request_id).status is JobStatus.COMPLETED


def test_a_lost_lease_stops_the_run_at_its_next_step(fast_stack) -> None:
    stack = fast_stack
    request_id = stack.enqueue()
    slow = SlowEngine()
    thread, outcome = run_in_thread(lambda: stack.claim_and_run(slow, "replica-1:first"))
    try:
        assert slow.started.wait(5)
        stack.clock.advance(1000)  # the reaper takes the job back, as if replica-1 had stopped beating
        assert stack.store.reap().requeued == [request_id]
        thread.join(5)
        assert not thread.is_alive()
    finally:
        slow.release.set()
        thread.join(5)
    assert outcome == [None] and slow.finished == 0
    assert stack.store.get(request_id).status is JobStatus.IN_QUEUE


def test_a_running_job_cancelled_ends_cancelled_within_a_step(stack) -> None:
    """Defect: a running job could not be cancelled (409). Now it stops at its next progress report (at most
    a second of steps later), ends cancelled with no output, and its worker is free again."""
    request_id = stack.enqueue()
    slow = SlowEngine(step_seconds=0.05)
    runner = stack.runner(slow)
    record = stack.store.claim_next("replica-1:run1")
    thread, outcome = run_in_thread(lambda: runner.run(record, "replica-1:run1"))
    try:
        assert slow.started.wait(5)
        steps_before = slow.steps
        assert stack.store.cancel(request_id, "alpha").pending
        thread.join(5)
        assert not thread.is_alive()
    finally:
        slow.release.set()
        thread.join(5)
    assert outcome == [JobStatus.CANCELLED]
    assert slow.steps - steps_before <= 1.0 / 0.05 + 2  # seen at the first beat, a second at most
    record = stack.store.get(request_id)
    assert record.status is JobStatus.CANCELLED and record.output_key is None
    assert stack.objects("outputs") == [] and not runner.running
    assert stack.metrics.counter("jobs") == {"cancelled": 1.0}


class CancelledAfterLastStepEngine:
    """A client's cancel lands after the engine's last progress report, while the video is muxed."""

    def __init__(self, stack: Any, request_id: str) -> None:
        self.stack, self.request_id = stack, request_id

    def run(
        self, settings: JobSettings, inputs: Inputs, out_path: Path, progress: ProgressFn
    ) -> EngineOutput:
        output = OkEngine().run(settings, inputs, out_path, progress)
        assert self.stack.store.cancel(self.request_id, "alpha").pending
        return output


def test_a_cancel_after_the_last_step_still_ends_the_job_cancelled(stack) -> None:
    request_id = stack.enqueue()
    assert stack.claim_and_run(CancelledAfterLastStepEngine(stack, request_id)) is JobStatus.CANCELLED
    record = stack.store.get(request_id)
    assert record.status is JobStatus.CANCELLED and record.output_key is None
    assert stack.objects("outputs") == []


def test_a_run_past_the_time_limit_fails(redis_conn, tmp_path) -> None:
    """Defect: nothing bounded a run's length."""
    stack = build_stack(redis_conn, tmp_path, queue={"max_run_seconds": 600.0})
    request_id = stack.enqueue()
    slow = SlowEngine()
    record = stack.store.claim_next("replica-1:run1")
    thread, outcome = run_in_thread(lambda: stack.runner(slow).run(record, "replica-1:run1"))
    try:
        assert slow.started.wait(5)
        stack.clock.advance(601)
        thread.join(5)
        assert not thread.is_alive()
    finally:
        slow.release.set()
        thread.join(5)
    assert outcome == [JobStatus.FAILED]
    assert stack.store.get(request_id).error.code == TIME_LIMIT


def test_a_hung_run_stops_extending_its_lease_and_says_it_stalled(fast_stack) -> None:
    """Defect: the heartbeat renewed the lease whether or not the job made progress, so a hung CUDA call held
    its job and replica forever. Now a stalled run's lease runs out (the job goes to another replica) and the
    runner reports the stall, which fails the replica's health check."""
    stack = fast_stack
    request_id = stack.enqueue()
    hanging = HangingEngine()
    runner = stack.runner(hanging, stall_seconds=0.5)
    record = stack.store.claim_next("replica-1:run1")
    thread, _ = run_in_thread(lambda: runner.run(record, "replica-1:run1"))
    try:
        assert hanging.started.wait(5)
        assert not runner.stalled
        wait_until(lambda: runner.stalled, timeout=5)
        stack.clock.advance(1.0)  # beats go on, but none extends the lease any more: it expires
        assert stack.store.reap().requeued == [request_id]
    finally:
        hanging.release.set()
        thread.join(5)


def test_a_graceful_stop_hands_the_job_back_at_its_place(stack) -> None:
    first, second = stack.enqueue(), stack.enqueue()
    slow = SlowEngine()
    runner = stack.runner(slow)
    record = stack.store.claim_next("replica-1:run1")
    thread, outcome = run_in_thread(lambda: runner.run(record, "replica-1:run1"))
    try:
        assert slow.started.wait(5)
        assert runner.running
        runner.request_stop()
        thread.join(5)
    finally:
        slow.release.set()
        thread.join(5)
    assert outcome == [JobStatus.IN_QUEUE] and not runner.running and slow.finished == 0
    record = stack.store.get(first)
    assert record.status is JobStatus.IN_QUEUE and record.attempt == 0
    assert stack.store.queue_position(first) == 0 and stack.store.queue_position(second) == 1


# -- the worker loop ---------------------------------------------------------------------------------------


def test_the_worker_claims_and_runs_jobs_as_they_come(stack) -> None:
    engine = OkEngine()
    worker = JobWorker(stack.store, stack.runner(engine), "replica-1", idle_wait_seconds=0.2)
    worker.start()
    try:
        ids = [stack.enqueue(), stack.enqueue(tenant="beta")]
        wait_until(lambda: all(stack.store.get(i).status is JobStatus.COMPLETED for i in ids), timeout=10)
        later = stack.enqueue()  # woken by the store when it arrives
        wait_until(lambda: stack.store.get(later).status is JobStatus.COMPLETED, timeout=10)
        # The record turns completed inside the run; the loop counts the job just after it returns.
        wait_until(lambda: worker.jobs_run == 3, timeout=5)
        assert worker.health_problem() is None
    finally:
        worker.stop(drain_seconds=5)


def test_a_replica_that_fails_different_jobs_in_a_row_stops_claiming_and_asks_to_be_replaced(stack) -> None:
    crashing = CrashingEngine()
    worker = JobWorker(stack.store, stack.runner(crashing), "replica-1", idle_wait_seconds=0.1)
    ids = [stack.enqueue() for _ in range(CRASHED_JOBS_UNHEALTHY + 1)]
    worker.start()
    try:
        wait_until(lambda: worker.health_problem() is not None, timeout=10)
        time.sleep(0.5)  # the loop would have claimed the last job by now
    finally:
        worker.stop(drain_seconds=1)
    assert (
        worker.health_problem()
        == f"{CRASHED_JOBS_UNHEALTHY} different jobs in a row failed here unexpectedly"
    )
    assert crashing.calls == CRASHED_JOBS_UNHEALTHY
    assert stack.store.get(ids[-1]).status is JobStatus.IN_QUEUE


class EncoderGoneEngine:
    """Fails as the sampler's engine does when the audio encoder it calls died mid-call."""

    def run(
        self, settings: JobSettings, inputs: Inputs, out_path: Path, progress: ProgressFn
    ) -> EngineOutput:
        raise DependencyFailed("the audio encoder failed: the actor died unexpectedly")


class OutOfMemoryEngine:
    """A job larger than the replica's share of its GPU."""

    def run(
        self, settings: JobSettings, inputs: Inputs, out_path: Path, progress: ProgressFn
    ) -> EngineOutput:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")


def run_new_jobs(stack, runner, count: int) -> None:
    for _ in range(count):
        request_id = stack.enqueue()
        worker_id = f"replica-1:{request_id[:8]}"
        assert runner.run(stack.store.claim_next(worker_id), worker_id) is None
        assert stack.store.get(request_id).status is JobStatus.IN_PROGRESS  # retried after its lease


@pytest.mark.parametrize("engine", [EncoderGoneEngine(), OutOfMemoryEngine()], ids=["dependency", "oom"])
def test_jobs_failed_by_a_dependency_or_their_size_do_not_count_against_the_replica(stack, engine) -> None:
    runner = stack.runner(engine)
    run_new_jobs(stack, runner, CRASHED_JOBS_UNHEALTHY)
    assert runner.crashed_jobs_in_a_row == 0


@pytest.mark.parametrize("broken", ["get_bytes", "put_file"])
def test_jobs_failed_by_storage_do_not_count_against_the_replica(stack, monkeypatch, broken) -> None:
    def unavailable(*args, **kwargs):
        raise OSError("Transport endpoint is not connected")

    monkeypatch.setattr(stack.storage, broken, unavailable)
    runner = stack.runner(OkEngine())
    run_new_jobs(stack, runner, CRASHED_JOBS_UNHEALTHY)
    assert runner.crashed_jobs_in_a_row == 0


def test_a_failure_elsewhere_between_two_crashes_neither_counts_nor_clears_the_count(stack) -> None:
    engine = SwitchableEngine(CrashingEngine())
    runner = stack.runner(engine)
    run_new_jobs(stack, runner, 1)
    engine.engine = EncoderGoneEngine()
    run_new_jobs(stack, runner, 1)
    assert runner.crashed_jobs_in_a_row == 1
    engine.engine = CrashingEngine()
    run_new_jobs(stack, runner, 2)
    assert runner.crashed_jobs_in_a_row == 3


class SwitchableEngine:
    """Runs whichever engine it holds now: one replica's engine as its health changes."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def run(
        self, settings: JobSettings, inputs: Inputs, out_path: Path, progress: ProgressFn
    ) -> EngineOutput:
        return self.engine.run(settings, inputs, out_path, progress)


def test_one_job_crashing_on_every_attempt_counts_once_and_a_success_clears_the_count(stack) -> None:
    engine = SwitchableEngine(CrashingEngine())
    runner = stack.runner(engine)
    request_id = stack.enqueue()
    for attempt in (1, 2):
        runner.run(stack.store.claim_next(f"replica-1:run{attempt}"), f"replica-1:run{attempt}")
        stack.clock.advance(LEASE + 1)
        stack.store.reap()
    assert runner.crashed_jobs_in_a_row == 1 and stack.store.get(request_id).attempt == 2
    engine.engine = OkEngine()
    assert runner.run(stack.store.claim_next("replica-1:run3"), "replica-1:run3") is JobStatus.COMPLETED
    assert runner.crashed_jobs_in_a_row == 0


def test_a_stopping_worker_hands_its_job_back_after_the_drain(stack) -> None:
    slow = SlowEngine()
    worker = JobWorker(stack.store, stack.runner(slow), "replica-1", idle_wait_seconds=0.2)
    worker.start()
    request_id = stack.enqueue()
    try:
        assert slow.started.wait(5)
        worker.stop(drain_seconds=0.2)
    finally:
        slow.release.set()
    record = stack.store.get(request_id)
    assert record.status is JobStatus.IN_QUEUE and record.attempt == 0


def test_a_worker_whose_job_hangs_reports_it(fast_stack) -> None:
    stack = fast_stack
    hanging = HangingEngine()
    worker = JobWorker(
        stack.store, stack.runner(hanging, stall_seconds=0.3), "replica-1", idle_wait_seconds=0.2
    )
    worker.start()
    stack.enqueue()
    try:
        assert hanging.started.wait(5)
        wait_until(lambda: worker.health_problem() == "the running job stopped making progress", timeout=5)
    finally:
        hanging.release.set()
        worker.stop(drain_seconds=1)
