"""Durable job records and queue state in Redis: the source of truth for every job's status."""

from serve.jobs.embedded_redis import EmbeddedRedis, EmbeddedRedisError
from serve.jobs.records import (
    DEFAULT_MAX_ATTEMPTS,
    RETRIES_EXHAUSTED,
    TERMINAL_STATUSES,
    JobError,
    JobRecord,
    JobStatus,
)
from serve.jobs.store import (
    CancelConflict,
    IdempotencyConflict,
    JobNotFound,
    JobStore,
    JobStoreError,
    QueueFull,
)

__all__ = [
    "DEFAULT_MAX_ATTEMPTS",
    "RETRIES_EXHAUSTED",
    "TERMINAL_STATUSES",
    "CancelConflict",
    "EmbeddedRedis",
    "EmbeddedRedisError",
    "IdempotencyConflict",
    "JobError",
    "JobNotFound",
    "JobRecord",
    "JobStatus",
    "JobStore",
    "JobStoreError",
    "QueueFull",
]
