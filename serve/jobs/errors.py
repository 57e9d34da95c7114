"""The job store's refusals. No HTTP here: ``serve/api/errors.py`` maps each to its status code."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from serve.jobs.records import JobRecord


class JobStoreError(Exception):
    """Base class of the store's refusals."""


class JobNotFound(JobStoreError):
    """No such job for this tenant (the API answers 404 for both, never revealing the id exists)."""

    def __init__(self, request_id: str) -> None:
        super().__init__(f"no job {request_id}")
        self.request_id = request_id


class JobGone(JobStoreError):
    """The job existed and was deleted after its retention (the API answers 410)."""


class IdempotencyConflict(JobStoreError):
    """The idempotency key was used before with a different body."""

    def __init__(self, request_id: str) -> None:
        super().__init__(f"the idempotency key was already used for request {request_id} with another body")
        self.request_id = request_id


class QueueFull(JobStoreError):
    """The whole queue holds ``max_queued`` jobs already."""


class TenantQueueFull(JobStoreError):
    """This tenant holds as many queued jobs as its cap allows; other tenants are still admitted."""

    def __init__(self, cap: int) -> None:
        super().__init__(f"this tenant already has {cap} queued jobs, its limit")
        self.cap = cap


class UploadQuotaExceeded(JobStoreError):
    """The tenant's stored uploads would pass its byte quota."""

    def __init__(self, quota_bytes: int, used_bytes: int) -> None:
        super().__init__(f"uploads would exceed this tenant's {quota_bytes} byte quota ({used_bytes} in use)")
        self.quota_bytes = quota_bytes
        self.used_bytes = used_bytes


class CancelConflict(JobStoreError):
    """The job finished already: there is nothing to cancel."""

    def __init__(self, record: JobRecord) -> None:
        super().__init__(f"job {record.request_id} is {record.status.value} and cannot be cancelled")
        self.record = record


class AppDraining(JobStoreError):
    """The app refuses new jobs while it drains (an upgrade, a shutdown); clients retry after a while."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"the service is draining; retry after {retry_after} s")
        self.retry_after = retry_after
