"""Getting every queued job a message, and taking back jobs whose sampler died.

The transport (Celery over Redis, via Ray Serve's task consumer) only carries request ids; the job store
decides. Three gaps make a job sit ``in_queue`` with no message, or ``in_progress`` with no worker, and this
module closes each:

* an ingress killed between writing the record and publishing its message: ids are marked *pending* before
  the record is written and unmarked after the publish; ``sweep`` publishes pending ids older than a grace
  period whose job is still queued;
* a sampler killed mid-job: its lease expires, ``sweep`` calls the store's reaper and re-publishes the
  requeued ids (or the job fails ``retries_exhausted``);
* a sampler shutting down hands its job back with ``release`` and re-publishes it itself.

A duplicate message is harmless (``JobStore.claim`` lets exactly one execution run), so every path here
publishes rather than risk a job without a message.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis

from serve.jobs.records import JobStatus
from serve.jobs.store import JobStore

logger = logging.getLogger(__name__)

Publish = Callable[[str], None]


@dataclass(frozen=True)
class SweepReport:
    republished: list[str]
    requeued: list[str]
    failed: list[str]


class Dispatcher:
    def __init__(
        self,
        store: JobStore,
        client: redis.Redis,
        publish: Publish,
        *,
        grace_seconds: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._redis = client
        self._publish = publish
        self._grace = grace_seconds
        self._clock = clock
        self._pending = f"{{{store.namespace}}}:unpublished"
        self._sweep_lock = f"{{{store.namespace}}}:sweep-lock"

    def mark_pending(self, request_id: str) -> None:
        """Call before the record is written, so a crash before the publish leaves a trace."""
        self._redis.zadd(self._pending, {request_id: self._clock()})

    def publish(self, request_id: str) -> None:
        """Publish, keeping (or leaving) the pending mark until the transport took the message."""
        self._redis.zadd(self._pending, {request_id: self._clock()}, nx=True)
        self._publish(request_id)
        self._redis.zrem(self._pending, request_id)

    def sweep(self, lock_seconds: float = 30.0) -> SweepReport:
        """Reap expired leases and publish forgotten jobs; one replica at a time (a Redis lock)."""
        token = f"{id(self)}:{self._clock()}"
        if not self._redis.set(self._sweep_lock, token, nx=True, px=int(lock_seconds * 1000)):
            return SweepReport([], [], [])
        try:
            requeued, failed = self._store.requeue_expired()
            for request_id in requeued:
                self.publish(request_id)
            republished = []
            cutoff = self._clock() - self._grace
            for raw in self._redis.zrangebyscore(self._pending, "-inf", cutoff):
                request_id = raw.decode() if isinstance(raw, bytes) else raw
                record = self._store.get(request_id)
                if record is not None and record.status is JobStatus.IN_QUEUE:
                    self.publish(request_id)
                    republished.append(request_id)
                else:
                    self._redis.zrem(self._pending, request_id)
            if requeued or failed or republished:
                logger.warning(
                    "sweep: requeued %d expired, failed %d exhausted, republished %d unpublished",
                    len(requeued),
                    len(failed),
                    len(republished),
                )
            return SweepReport(republished, requeued, failed)
        finally:
            if self._redis.get(self._sweep_lock) in (token, token.encode()):
                self._redis.delete(self._sweep_lock)
