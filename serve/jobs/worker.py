"""A sampler replica's job loop: claim the next job from the store, run it, repeat.

The store is the only queue: no message carries a job to a replica. An idle worker blocks on the store's
wake-up list (one entry per job that became runnable) with a timeout, then tries to claim; whichever worker
claims first runs the job, the others find nothing and wait again. A job requeued by the reaper or handed
back by a stopping replica is claimed the same way, at its original place in its tenant's queue.
"""

from __future__ import annotations

import logging
import threading
import time

import redis

from serve.jobs.runner import JobRunner, new_worker_id
from serve.jobs.store import JobStore

logger = logging.getLogger(__name__)

IDLE_WAIT_SECONDS = 2.0
REDIS_RETRY_SECONDS = 1.0
# After this many different jobs in a row failed here unexpectedly, the replica is the likelier cause (a
# GPU gone bad, a CUDA context poisoned by an earlier error): it claims nothing more and says so to its
# health check, so Serve replaces it instead of it failing every job it can claim.
CRASHED_JOBS_UNHEALTHY = 3


class JobWorker:
    def __init__(
        self,
        store: JobStore,
        runner: JobRunner,
        replica_id: str,
        *,
        idle_wait_seconds: float = IDLE_WAIT_SECONDS,
    ) -> None:
        self._store = store
        self._runner = runner
        self._replica_id = replica_id
        self._idle_wait = idle_wait_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="job-worker", daemon=True)
        self.jobs_run = 0

    def start(self) -> None:
        self._thread.start()

    @property
    def busy(self) -> bool:
        return self._runner.running

    def health_problem(self) -> str | None:
        """Why this replica should be replaced (its loop died, its job stopped making progress), or None."""
        if self._thread.ident is not None and not self._thread.is_alive() and not self._stop.is_set():
            return "the job loop stopped"
        if self._runner.stalled:
            return "the running job stopped making progress"
        if self._broken:
            return f"{self._runner.crashed_jobs_in_a_row} different jobs in a row failed here unexpectedly"
        return None

    @property
    def _broken(self) -> bool:
        return self._runner.crashed_jobs_in_a_row >= CRASHED_JOBS_UNHEALTHY

    def stop(self, drain_seconds: float) -> None:
        """Claim nothing more; let the running job finish for ``drain_seconds``, then hand it back."""
        self._stop.set()
        deadline = time.monotonic() + drain_seconds
        while self._runner.running and time.monotonic() < deadline:
            time.sleep(0.2)
        if self._runner.running:
            self._runner.request_stop()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.is_set():
            if self._broken:
                self._stop.wait(self._idle_wait)  # until Serve replaces this replica
                continue
            try:
                worker_id = new_worker_id(self._replica_id)
                record = self._store.claim_next(worker_id)
                if record is None:
                    self._store.wait_for_work(self._idle_wait)
                    continue
                self._runner.run(record, worker_id)
                self.jobs_run += 1
            except redis.RedisError as error:  # Redis away: the leases and the reaper keep jobs safe
                logger.warning("job loop: Redis unavailable (%s); retrying", error)
                self._stop.wait(REDIS_RETRY_SECONDS)
