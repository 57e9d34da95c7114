"""Durable job records and the queue in Redis: the source of truth for every job's status.

The classes load on first use, so importing ``serve.jobs`` for its errors or records does not connect
anything or pull in the Redis client.
"""

from serve.jobs.errors import (
    CancelConflict,
    IdempotencyConflict,
    JobNotFound,
    JobStoreError,
    QueueFull,
    TenantQueueFull,
    UploadQuotaExceeded,
)
from serve.jobs.records import (
    DEFAULT_MAX_ATTEMPTS,
    RETRIES_EXHAUSTED,
    TERMINAL_STATUSES,
    TIME_LIMIT,
    InputSource,
    JobError,
    JobRecord,
    JobSettings,
    JobStatus,
    StagedInput,
)

__all__ = [
    "DEFAULT_MAX_ATTEMPTS",
    "RETRIES_EXHAUSTED",
    "TERMINAL_STATUSES",
    "TIME_LIMIT",
    "CancelConflict",
    "IdempotencyConflict",
    "InputSource",
    "JobError",
    "JobNotFound",
    "JobRecord",
    "JobSettings",
    "JobStatus",
    "JobStoreError",
    "QueueFull",
    "StagedInput",
    "TenantQueueFull",
    "UploadQuotaExceeded",
]
