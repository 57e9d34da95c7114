"""Sampler autoscaling on backlog: queued + running jobs from the job store, so it can scale from zero.

Ray's stock ``AsyncInferenceAutoscalingPolicy`` counts only messages still in the broker list: jobs already
running are invisible to it, so it scales busy replicas down and kills their jobs (seen in experiments).
The job store knows both numbers exactly. The policy runs in the Serve controller, so the Redis read is a
short-timeout call made at most every ``poll_interval_s`` and never blocks on a dead Redis for long.
"""

from __future__ import annotations

import logging
import math
import os
import time
from typing import Any

import redis
from ray.serve.config import AutoscalingContext

from serve.jobs.records import JobStatus
from serve.jobs.store import JobStore

logger = logging.getLogger("ray.serve")

_TIMEOUT_SECONDS = 1.0


class BacklogPolicy:
    def __init__(
        self,
        redis_url: str | None = None,
        redis_url_env: str = "INFINITETALK_REDIS_URL",
        namespace: str = "infinitetalk",
        jobs_per_replica: float = 1.0,
        poll_interval_s: float = 2.0,
    ) -> None:
        self._url = os.environ.get(redis_url_env) or redis_url
        self._namespace = namespace
        self._jobs_per_replica = jobs_per_replica
        self._interval = poll_interval_s
        self._store: JobStore | None = None
        self._backlog = 0
        self._polled_at = 0.0

    def _poll(self) -> None:
        if self._url is None:
            return
        if self._store is None:
            client = redis.Redis.from_url(
                self._url, socket_timeout=_TIMEOUT_SECONDS, socket_connect_timeout=_TIMEOUT_SECONDS
            )
            self._store = JobStore(client, namespace=self._namespace)
        counts = self._store.counts()
        self._backlog = counts[JobStatus.IN_QUEUE] + counts[JobStatus.IN_PROGRESS]

    def __call__(self, ctx: AutoscalingContext) -> tuple[int, dict[str, Any]]:
        now = time.monotonic()
        if now - self._polled_at >= self._interval:
            self._polled_at = now
            try:
                self._poll()
            except redis.RedisError as error:
                # Keep the last known backlog: scaling down on a Redis blip would kill running jobs.
                logger.warning("backlog policy could not read the job store: %s", error)
        desired = math.ceil(self._backlog / self._jobs_per_replica)
        bounded = max(ctx.capacity_adjusted_min_replicas, min(ctx.capacity_adjusted_max_replicas, desired))
        return bounded, {"backlog": self._backlog}
