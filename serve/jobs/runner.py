"""Runs one job on a sampler replica: claim, heartbeat, generate, upload, finish.

No Ray here, so the whole job lifecycle is testable with a real Redis and a fake engine. The sampler
deployment calls ``JobRunner.run`` from its task handler for every message it receives.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pipeline.errors import CancelledError, PipelineError
from serve.jobs.records import JobError, JobRecord, JobStatus
from serve.jobs.store import JobStore
from serve.storage import output_key

logger = logging.getLogger(__name__)


class BlobStore(Protocol):
    def get_bytes(self, key: str) -> bytes: ...

    def put_file(self, key: str, path: Path, content_type: str) -> None: ...


@dataclass
class EngineOutput:
    timings: dict[str, float] = field(default_factory=dict)
    reproducibility: dict[str, Any] = field(default_factory=dict)


ProgressFn = Callable[[float, float | None], None]


class Engine(Protocol):
    """What a sampler replica runs: inputs as bytes in, an MP4 at ``out_path`` out."""

    def run(
        self, params: dict[str, Any], image: bytes, audio: bytes, out_path: Path, progress: ProgressFn
    ) -> EngineOutput: ...


class LeaseLost(Exception):
    """The store gave this job to another execution (our lease expired): stop without touching it."""


class Stopping(Exception):
    """The replica is shutting down: hand the job back to the queue."""


class _Heartbeat(threading.Thread):
    """Renews the lease every third of its length and carries the latest progress to the store."""

    def __init__(self, store: JobStore, request_id: str, worker_id: str) -> None:
        super().__init__(name=f"heartbeat-{request_id}", daemon=True)
        self._store, self._id, self._worker = store, request_id, worker_id
        self._stop_event = threading.Event()
        self.progress: tuple[float, float | None] = (0.0, None)
        self.lost = False

    def run(self) -> None:
        interval = self._store.lease_seconds / 3
        while not self._stop_event.wait(interval):
            self.beat()

    def beat(self) -> None:
        try:
            fraction, eta = self.progress
            if not self._store.heartbeat(self._id, self._worker, progress=fraction, eta_seconds=eta):
                self.lost = True
                self._stop_event.set()
        except Exception:  # a Redis blip must not kill the job; the next beat retries
            logger.warning("heartbeat of %s failed", self._id, exc_info=True)

    def stop(self) -> None:
        self._stop_event.set()


class JobRunner:
    def __init__(
        self,
        store: JobStore,
        storage: BlobStore,
        engine: Engine,
        *,
        replica_id: str,
        republish: Callable[[str], None],
        on_finished: Callable[[JobRecord], None] = lambda record: None,
    ) -> None:
        self._store = store
        self._storage = storage
        self._engine = engine
        self._replica_id = replica_id
        self._republish = republish
        self._on_finished = on_finished
        self._stopping = threading.Event()
        self._running = 0
        self._lock = threading.Lock()

    @property
    def running(self) -> int:
        return self._running

    def request_stop(self) -> None:
        """Graceful shutdown: the running job is handed back at its next progress report."""
        self._stopping.set()

    def run(self, request_id: str) -> JobStatus | None:
        """Execute one delivery of ``request_id``'s message: the oldest queued job (``JobStore.claim_next``).

        None when the store says nothing is to run (the job finished, was cancelled or is running).
        """
        worker_id = f"{self._replica_id}:{uuid.uuid4().hex[:12]}"
        if self._stopping.is_set():
            self._republish(request_id)
            return None
        record = self._store.claim_next(request_id, worker_id)
        if record is None:
            logger.info(
                "skipping delivery of %s: nothing claimable (finished, cancelled or running)", request_id
            )
            return None
        with self._lock:
            self._running += 1
        heartbeat = _Heartbeat(self._store, record.request_id, worker_id)
        heartbeat.start()
        try:
            return self._execute(record, worker_id, heartbeat)
        finally:
            heartbeat.stop()
            with self._lock:
                self._running -= 1

    def _execute(self, record: JobRecord, worker_id: str, heartbeat: _Heartbeat) -> JobStatus | None:
        request_id = record.request_id

        def progress(fraction: float, eta: float | None) -> None:
            heartbeat.progress = (fraction, eta)
            if heartbeat.lost:
                raise LeaseLost(request_id)
            if self._stopping.is_set():
                raise Stopping(request_id)

        started = time.perf_counter()
        try:
            image = self._storage.get_bytes(record.inputs["image"])
            audio = self._storage.get_bytes(record.inputs["audio"])
            fetch_seconds = time.perf_counter() - started
            with tempfile.TemporaryDirectory(prefix="infinitetalk-") as workdir:
                out_path = Path(workdir) / "video.mp4"
                result = self._engine.run(record.params, image, audio, out_path, progress)
                upload_started = time.perf_counter()
                # One fixed key per job: a second execution overwrites the same object, never a duplicate.
                key = output_key(record.tenant, request_id)
                self._storage.put_file(key, out_path, "video/mp4")
            timings = {
                "fetch_inputs": record.timings.get("fetch_inputs", 0.0) + fetch_seconds,
                **result.timings,
                "upload": time.perf_counter() - upload_started,
            }
            if not self._store.complete(
                request_id, worker_id, {"video": key}, timings, result.reproducibility
            ):
                logger.warning(
                    "job %s finished but its lease had moved on; result left to the owner", request_id
                )
                return None
            return self._finished(request_id, JobStatus.COMPLETED)
        except (LeaseLost, CancelledError):
            logger.warning("job %s: lease lost mid-run; another execution owns it", request_id)
            return None
        except Stopping:
            if not self._store.release(request_id, worker_id):
                return None
            self._republish(request_id)
            logger.info("job %s handed back to the queue (replica stopping)", request_id)
            return JobStatus.IN_QUEUE
        except PipelineError as error:
            # Bad media or settings found late: the job's own fault, so retrying cannot help.
            if not self._store.fail(request_id, worker_id, JobError(error.code, error.message)):
                return None
            return self._finished(request_id, JobStatus.FAILED)
        except Exception:
            # Unknown failure (OOM, a bug): leave the lease to expire so the reaper retries the job on a
            # fresh execution, bounded by max_attempts.
            logger.exception(
                "job %s attempt %d failed; it will be retried after its lease", request_id, record.attempt
            )
            heartbeat.stop()
            return None

    def _finished(self, request_id: str, status: JobStatus) -> JobStatus:
        record = self._store.get(request_id)
        if record is not None:
            self._on_finished(record)
        return status
