"""Runs one claimed job on a sampler replica: heartbeat, generate, upload this run's output, finish.

No Ray here, so the whole job lifecycle is testable with a real Redis and a fake engine. The replica's
``JobWorker`` claims a job and hands it to ``JobRunner.run``.

What stops a run, and how it ends:

* a client cancels it: the next heartbeat says so, the engine's next progress report raises, the job ends
  ``cancelled`` with no output;
* it passes the maximum run time: likewise, the job fails ``time_limit``;
* its lease moved on (the replica was paused past it, Redis was away longer than the lease): the run stops
  without touching the job, which another execution owns now;
* it makes no progress for ``stall_seconds`` (a hung CUDA call): the heartbeat stops renewing the lease, so
  the reaper hands the job to another replica, and ``stalled`` tells the replica's health check, so Serve
  replaces the replica that hangs;
* the replica stops: the job is handed back to the queue at its place;
* its staged inputs are gone from storage: the job fails ``inputs_missing`` at once (no run can succeed).

The call that ends the job (``complete``, ``fail``, ...) is retried through a Redis blip for up to a lease:
each is safe to repeat, and giving up would throw a finished run away and leave its video behind.

Every run writes its video under its own key; ``complete`` records which run won, and a run that loses
(its lease moved on while it uploaded) deletes its object, so a job's output never changes once shown. The
winner deletes what a run killed between its upload and its ``complete`` left under the job.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Protocol, TypeVar

import redis
import torch

from pipeline.errors import PipelineError
from serve.jobs.operations import Beat
from serve.jobs.records import INPUTS_MISSING, TIME_LIMIT, JobError, JobRecord, JobSettings, JobStatus
from serve.jobs.store import JobStore
from serve.storage import ObjectNotFound, ObjectStore, output_key, outputs_of

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

# Ending a job through a Redis blip: the first retry after this long, doubling up to the second.
FIRST_SETTLE_RETRY_SECONDS = 0.2
MAX_SETTLE_RETRY_SECONDS = 5.0
# The engine reports progress every denoising step; a heartbeat goes with a report at most this often, so
# a cancel is seen within a step without a Redis call per step on fast hardware.
MIN_BEAT_INTERVAL_SECONDS = 1.0


@dataclass
class EngineOutput:
    timings: dict[str, float] = field(default_factory=dict)
    reproducibility: dict[str, Any] = field(default_factory=dict)


ProgressFn = Callable[[float, float | None], None]
# A job's input bytes by role: "image", "audio" and, with two speakers, "audio2".
Inputs = Mapping[str, bytes]


class Engine(Protocol):
    """What a sampler replica runs: settings and input bytes in, an MP4 at ``out_path`` out."""

    def run(
        self, settings: JobSettings, inputs: Inputs, out_path: Path, progress: ProgressFn
    ) -> EngineOutput: ...


class DependencyFailed(Exception):
    """A failure outside this replica (a deployment it called died or did not answer): the job is retried
    as after any unknown failure, without counting against the replica."""


class _RunHealth(Enum):
    """What a run's ending says of its replica."""

    CLEAN = "clean"  # it ended as jobs end (done, failed by its own inputs, cancelled, handed back)
    CRASHED = "crashed"  # the generation failed unexpectedly here
    INCONCLUSIVE = "inconclusive"  # something outside the generation failed (storage, Redis, a dependency)


class _InputsMissing(PipelineError):
    """A staged input of the job is no longer in storage: like bad media, no run of the job can succeed."""

    code = INPUTS_MISSING

    def __init__(self, role: str) -> None:
        super().__init__(f"The job's {role} input is no longer stored; submit the job again.")


class _Interrupted(Exception):
    """Raised from the engine's progress report to stop a run; ``beat`` says why."""

    def __init__(self, beat: Beat | None) -> None:
        super().__init__(beat.value if beat else "stopping")
        self.beat = beat


# Failures of a generation that say nothing against its replica: a stop asked for, the job's own bad input,
# a deployment it called, and a job that needs more memory than the replica's share (another may have more).
_NOT_THE_REPLICAS_FAULT = (_Interrupted, PipelineError, DependencyFailed, torch.OutOfMemoryError)


class _Heartbeat:
    """Carries a run's progress to the store and the store's verdict back.

    Beats come from the engine's progress reports (at most every ``MIN_BEAT_INTERVAL_SECONDS``) and from a
    thread every third of the lease, for steps longer than that. Once no progress was reported for
    ``stall_seconds`` the lease is no longer extended.
    """

    def __init__(self, store: JobStore, request_id: str, worker_id: str, stall_seconds: float | None) -> None:
        self._store, self._id, self._worker = store, request_id, worker_id
        self._stall_seconds = stall_seconds
        self._lock = threading.Lock()
        self._stop_event = threading.Event()
        self._progress: tuple[float, float | None] = (0.0, None)
        self._progress_at = self._beat_at = time.monotonic()
        self.verdict: Beat = Beat.OK
        self._stall_reported = False
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{request_id}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop_event.set()

    @property
    def stalled(self) -> bool:
        return self._stall_seconds is not None and time.monotonic() - self._progress_at > self._stall_seconds

    def report(self, fraction: float, eta: float | None) -> Beat:
        """The engine's progress: remembered, and beaten to the store when the last beat is a second old."""
        with self._lock:
            self._progress, self._progress_at = (fraction, eta), time.monotonic()
        if time.monotonic() - self._beat_at >= MIN_BEAT_INTERVAL_SECONDS:
            self.beat()
        return self.verdict

    def _run(self) -> None:
        interval = self._store.policy.lease_seconds / 3
        while not self._stop_event.wait(interval):
            self.beat()
            if self.verdict is not Beat.OK:
                return

    def beat(self) -> None:
        with self._lock:
            if self.verdict is not Beat.OK:
                return
            fraction, eta = self._progress
            extend = not self.stalled
            if not extend and not self._stall_reported:
                self._stall_reported = True
                logger.error(
                    "job %s made no progress for %s s: its lease is let expire", self._id, self._stall_seconds
                )
            try:
                self.verdict = self._store.heartbeat(
                    self._id, self._worker, extend=extend, progress=fraction, eta_seconds=eta
                )
            except Exception:  # a Redis blip must not kill the job; the next beat retries
                logger.warning("heartbeat of %s failed", self._id, exc_info=True)
            self._beat_at = time.monotonic()


class JobRunner:
    def __init__(
        self,
        store: JobStore,
        storage: ObjectStore,
        engine: Engine,
        *,
        stall_seconds: float | None = None,
        on_finished: Callable[[JobRecord], None] = lambda record: None,
    ) -> None:
        self._store = store
        self._storage = storage
        self._engine = engine
        self._stall_seconds = stall_seconds
        self._on_finished = on_finished
        self._stopping = threading.Event()
        self._heartbeat: _Heartbeat | None = None
        self._run_health = _RunHealth.CLEAN
        self._crashed_in_a_row: set[str] = set()

    @property
    def running(self) -> bool:
        return self._heartbeat is not None

    @property
    def stalled(self) -> bool:
        """The running job made no progress for ``stall_seconds``: the replica should be replaced."""
        heartbeat = self._heartbeat
        return heartbeat is not None and heartbeat.stalled

    @property
    def crashed_jobs_in_a_row(self) -> int:
        """How many different jobs in a row had their generation fail unexpectedly here (one job crashing
        on every attempt counts once: the job is the likelier cause then, not the replica)."""
        return len(self._crashed_in_a_row)

    def request_stop(self) -> None:
        """Graceful shutdown: the running job is handed back at its next progress report."""
        self._stopping.set()

    def run(self, record: JobRecord, worker_id: str) -> JobStatus | None:
        """Execute a job ``worker_id`` claimed; the status it ended in (None: not ours to end any more)."""
        heartbeat = _Heartbeat(self._store, record.request_id, worker_id, self._stall_seconds)
        self._heartbeat = heartbeat
        self._run_health = _RunHealth.CLEAN
        heartbeat.start()
        try:
            return self._execute(record, worker_id, heartbeat)
        finally:
            heartbeat.stop()
            self._heartbeat = None
            if self._run_health is _RunHealth.CRASHED:
                self._crashed_in_a_row.add(record.request_id)
            elif self._run_health is _RunHealth.CLEAN:
                self._crashed_in_a_row.clear()

    def _execute(self, record: JobRecord, worker_id: str, heartbeat: _Heartbeat) -> JobStatus | None:
        request_id = record.request_id

        def progress(fraction: float, eta: float | None) -> None:
            verdict = heartbeat.report(fraction, eta)
            if verdict is not Beat.OK:
                raise _Interrupted(verdict)
            if self._stopping.is_set():
                raise _Interrupted(None)

        started = time.perf_counter()
        try:
            inputs = self._read_inputs(record)
            fetch_seconds = time.perf_counter() - started
            with tempfile.TemporaryDirectory(prefix="infinitetalk-") as workdir:
                out_path = Path(workdir) / "video.mp4"
                result = self._generate(record, inputs, out_path, progress)
                upload_started = time.perf_counter()
                key = output_key(record.tenant, request_id, run_token(worker_id))
                self._storage.put_file(key, out_path, "video/mp4")
            timings = {**record.timings, "fetch_inputs": fetch_seconds, **result.timings}
            timings["upload"] = time.perf_counter() - upload_started
            ended = self._settle(
                lambda: self._store.complete(request_id, worker_id, key, timings, result.reproducibility)
            )
            if ended is JobStatus.COMPLETED:
                self._delete_other_runs_outputs(record, key)
                return self._finished(request_id, ended)
            # Cancelled meanwhile, or another run owns the job now: this run's video must never be shown.
            self._storage.delete(key)
            if ended is JobStatus.CANCELLED:
                logger.info("job %s: cancelled while its video was stored; the video was deleted", request_id)
                return self._finished(request_id, ended)
            logger.warning("job %s: finished after losing its lease; its video was deleted", request_id)
            return None
        except _Interrupted as interruption:
            return self._interrupted(record, worker_id, interruption.beat)
        except PipelineError as error:
            # Bad media or settings found late, or inputs gone: the job's own fault, retrying cannot help.
            failure = JobError(error.code, error.message)
            if not self._settle(lambda: self._store.fail(request_id, worker_id, failure)):
                return None
            return self._finished(request_id, JobStatus.FAILED)
        except Exception:
            # Unknown failure (OOM, a bug, storage or Redis away): leave the lease to expire so the reaper
            # retries the job on a fresh execution, bounded by max_attempts.
            logger.exception("job %s attempt %d failed; retried after its lease", request_id, record.attempt)
            if self._run_health is _RunHealth.CLEAN:
                self._run_health = _RunHealth.INCONCLUSIVE
            return None

    def _interrupted(self, record: JobRecord, worker_id: str, beat: Beat | None) -> JobStatus | None:
        request_id = record.request_id
        if beat is None:
            if not self._settle(lambda: self._store.release(request_id, worker_id)):
                return None
            logger.info("job %s handed back to the queue (replica stopping)", request_id)
            return JobStatus.IN_QUEUE
        if beat is Beat.CANCEL:
            if not self._settle(lambda: self._store.finish_cancelled(request_id, worker_id)):
                return None
            return self._finished(request_id, JobStatus.CANCELLED)
        if beat is Beat.TIME_LIMIT:
            limit = self._store.policy.max_run_seconds
            error = JobError(TIME_LIMIT, f"The job ran longer than the {limit:g} s it is allowed.")
            if not self._settle(lambda: self._store.fail(request_id, worker_id, error)):
                return None
            return self._finished(request_id, JobStatus.FAILED)
        logger.warning("job %s: lease lost mid-run; another execution owns it", request_id)
        return None

    def _generate(
        self, record: JobRecord, inputs: Inputs, out_path: Path, progress: ProgressFn
    ) -> EngineOutput:
        try:
            return self._engine.run(record.settings, inputs, out_path, progress)
        except _NOT_THE_REPLICAS_FAULT:
            raise
        except Exception:
            self._run_health = _RunHealth.CRASHED  # the generation itself failed on this replica
            raise

    def _delete_other_runs_outputs(self, record: JobRecord, published: str) -> None:
        """What earlier runs of the job left in storage: a run killed between its upload and its
        ``complete`` leaves a video no record names (one that lost its lease deletes its own)."""
        try:
            for key in self._storage.keys_under(outputs_of(record.tenant, record.request_id)):
                if key != published:
                    self._storage.delete(key)
                    logger.info(
                        "job %s: deleted %s, an earlier run's unpublished video", record.request_id, key
                    )
        except Exception:  # best effort: the storage sweep removes it after the retention
            logger.warning("job %s: earlier runs' outputs not cleaned up", record.request_id, exc_info=True)

    def _read_inputs(self, record: JobRecord) -> dict[str, bytes]:
        inputs = {}
        for role, staged in record.inputs.items():
            try:
                inputs[role] = self._storage.get_bytes(staged.key)
            except ObjectNotFound:
                raise _InputsMissing(role) from None
        return inputs

    def _settle(self, call: Callable[[], _T]) -> _T:
        """``call`` (one that ends the job), retried while Redis is unreachable, for up to a lease."""
        deadline = time.monotonic() + self._store.policy.lease_seconds
        delay = FIRST_SETTLE_RETRY_SECONDS
        while True:
            try:
                return call()
            except redis.RedisError as error:
                if time.monotonic() + delay > deadline:
                    raise
                logger.warning("job store unreachable (%s); retrying in %.1f s", error, delay)
                time.sleep(delay)
                delay = min(2 * delay, MAX_SETTLE_RETRY_SECONDS)

    def _finished(self, request_id: str, status: JobStatus) -> JobStatus:
        record = self._store.get(request_id)
        if record is not None:
            self._on_finished(record)
        return status


def new_worker_id(replica_id: str) -> str:
    """One execution's identity: the replica, and a token unique to this claim."""
    return f"{replica_id}:{uuid.uuid4().hex[:16]}"


def run_token(worker_id: str) -> str:
    """The part of a worker id that names the run (a storage key segment: the replica id may not be one)."""
    return worker_id.rsplit(":", 1)[-1]
