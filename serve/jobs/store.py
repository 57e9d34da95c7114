"""The job store, synchronous: what workers, the maintenance loop, the CLI and tests call.

The store is the queue: records, each tenant's queue of ids, the rotation that takes tenants in turns,
leases and run deadlines all live in Redis and change only inside the Lua scripts of ``serve/jobs/lua``
(built and read by ``serve.jobs.operations``), so every transition is atomic. Two workers racing for a
job, a cancel racing a claim, a stale worker finishing after its lease moved on: exactly one outcome.
``AsyncJobStore`` runs the same calls for the HTTP API.

Attempts: ``attempt`` counts claims. A lease that expires (the worker died, hung or stopped making progress)
used up its attempt; after ``max_attempts`` the job fails ``retries_exhausted``. A graceful ``release``
(shutdown) gives the attempt back, but only ``max_releases`` times per job.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import redis

from serve.jobs import operations
from serve.jobs.keys import Keys
from serve.jobs.operations import Beat, CancelOutcome, QueuePolicy, ReapReport, TenantLimits, record_of
from serve.jobs.records import JobError, JobRecord, JobStatus, compact_json

logger = logging.getLogger(__name__)

T = TypeVar("T")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class JobStore:
    def __init__(
        self,
        redis_client: redis.Redis,
        *,
        namespace: str = "infinitetalk",
        policy: QueuePolicy | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = redis_client
        self.keys = Keys(namespace)
        self.policy = policy or QueuePolicy()
        self._clock = clock
        self._scripts = {
            name: redis_client.register_script(operations.script_source(name)) for name in operations.SCRIPTS
        }

    @property
    def namespace(self) -> str:
        return self.keys.namespace

    def now(self) -> float:
        return self._clock()

    def _run(self, call: operations.Call[T]) -> T:
        return call.read(self._scripts[call.script](args=call.args))

    # -- submit, read, cancel (the API runs these through AsyncJobStore) ------------------------------------

    def create(
        self, record: JobRecord, idempotency_key: str | None = None, body_hash: str | None = None
    ) -> tuple[JobRecord, bool]:
        created = self._run(
            operations.create(self.keys, self.policy, record, self._clock(), idempotency_key, body_hash)
        )
        if created[1]:
            logger.info("job %s created for tenant %s", record.request_id, record.tenant)
        return created

    def get(self, request_id: str, tenant: str | None = None) -> JobRecord | None:
        """The record, or None if absent or owned by another tenant (``tenant=None``: any tenant)."""
        return record_of(self._redis.hgetall(self.keys.job(request_id)), tenant)

    def cancel(self, request_id: str, tenant: str) -> CancelOutcome:
        return self._run(operations.cancel(self.keys, self.policy, request_id, tenant, self._clock()))

    def queue_position(self, request_id: str) -> int | None:
        """0-based, about how many queued jobs start before this one; None when it is not queued."""
        record = self.get(request_id)
        if record is None or record.status is not JobStatus.IN_QUEUE:
            return None
        return self._run(operations.queue_position(self.keys, request_id, record.tenant))

    def counts(self) -> dict[JobStatus, int]:
        """Jobs per status, from counters the scripts maintain (one HGETALL, no scan)."""
        raw = {_text(k): int(v) for k, v in self._redis.hgetall(self.keys.counts).items()}
        return {status: raw.get(status.value, 0) for status in JobStatus}

    def tenant_usage(self, tenant: str) -> dict[str, int]:
        """Queued and running jobs and stored upload bytes of one tenant."""
        raw = {_text(k): int(v) for k, v in self._redis.hgetall(self.keys.usage(tenant)).items()}
        return {name: raw.get(name, 0) for name in ("queued", "running", "upload_bytes")}

    def set_tenant_limits(self, limits: Mapping[str, TenantLimits]) -> None:
        """Replace every tenant's own caps (the tokens file's, published by the ingress that loaded it)."""
        pipe = self._redis.pipeline(transaction=True)
        pipe.delete(self.keys.limits)
        if limits:
            pipe.hset(self.keys.limits, mapping={tenant: caps.encoded() for tenant, caps in limits.items()})
        pipe.execute()

    def set_draining(self, retry_after_seconds: int | None) -> None:
        """Stop (a number of seconds clients should wait) or resume (None) admitting new jobs, app-wide.

        Draining refuses submissions only: queued and running jobs go on, status, result and cancel answer.
        """
        if retry_after_seconds is None:
            self._redis.delete(self.keys.draining)
        elif isinstance(retry_after_seconds, bool) or retry_after_seconds < 1:
            raise ValueError(
                f"retry_after_seconds must be a positive whole number, got {retry_after_seconds!r}"
            )
        else:
            self._redis.set(self.keys.draining, int(retry_after_seconds))

    def draining_retry_after(self) -> int | None:
        value = self._redis.get(self.keys.draining)
        return None if value is None else int(value)

    def webhook_backlog(self) -> int:
        """Webhook deliveries waiting for an attempt or a retry."""
        return int(self._redis.zcard(self.keys.webhook_due))

    # -- workers --------------------------------------------------------------------------------------------

    def claim_next(self, worker_id: str) -> JobRecord | None:
        """The next job, fairly across tenants, for one attempt under a lease; None when none can run.

        ``worker_id`` names one execution (replica id + a fresh token per claim), so two attempts on one
        replica never share a lease.
        """
        record = self._run(operations.claim(self.keys, self.policy, worker_id, self._clock()))
        if record is not None:
            logger.info("job %s claimed by %s (attempt %d)", record.request_id, worker_id, record.attempt)
        return record

    def wait_for_work(self, timeout_seconds: float) -> None:
        """Block until a job may have become runnable (or the timeout): workers sleep here when idle."""
        self._redis.blpop([self.keys.wake], timeout=timeout_seconds)

    def heartbeat(
        self,
        request_id: str,
        worker_id: str,
        *,
        extend: bool = True,
        progress: float | None = None,
        eta_seconds: float | None = None,
    ) -> Beat:
        call = operations.heartbeat(
            self.keys,
            self.policy,
            request_id,
            worker_id,
            self._clock(),
            extend=extend,
            progress=progress,
            eta_seconds=eta_seconds,
        )
        return self._run(call)

    def complete(
        self,
        request_id: str,
        worker_id: str,
        output_key: str,
        timings: Mapping[str, float] | None = None,
        reproducibility: Mapping[str, Any] | None = None,
    ) -> JobStatus | None:
        """Publish this run's output: ``COMPLETED``. ``CANCELLED`` when a client cancelled the job first, and
        None when the worker no longer owns it: either way the caller must delete the object it wrote, since
        another run's output (or none) is the job's. Repeating the same call (a retry after a lost reply)
        answers the same again without changing anything."""
        values = {
            "output_key": output_key,
            "timings": compact_json(dict(timings or {})),
            "reproducibility": compact_json(dict(reproducibility or {})),
            "progress": "1.0",
        }
        return self._finish(request_id, worker_id, JobStatus.COMPLETED, values)

    def fail(self, request_id: str, worker_id: str, error: JobError) -> JobStatus | None:
        """End the job as failed with a typed error (no retry: the error is the job's, not the worker's)."""
        return self._finish(request_id, worker_id, JobStatus.FAILED, {"error": compact_json(error.to_dict())})

    def finish_cancelled(self, request_id: str, worker_id: str) -> JobStatus | None:
        """End a job a client cancelled while it ran: no output."""
        return self._finish(request_id, worker_id, JobStatus.CANCELLED, {"cancel_requested": "1"})

    def _finish(
        self, request_id: str, worker_id: str, status: JobStatus, values: Mapping[str, str]
    ) -> JobStatus | None:
        call = operations.finish(self.keys, self.policy, request_id, worker_id, self._clock(), status, values)
        ended = self._run(call)
        if ended is None:
            logger.warning(
                "job %s: %s by %s refused (not the lease owner)", request_id, status.value, worker_id
            )
        else:
            logger.info("job %s %s by %s", request_id, ended.value, worker_id)
        return ended

    def release(self, request_id: str, worker_id: str) -> bool:
        """Hand the job back at its original place (graceful shutdown); the attempt is given back."""
        released = self._run(operations.release(self.keys, self.policy, request_id, worker_id, self._clock()))
        if released:
            logger.info("job %s released by %s", request_id, worker_id)
        return released

    # -- maintenance ----------------------------------------------------------------------------------------

    def reap(self, limit: int = 1000) -> ReapReport:
        """Expired leases back to the queue (or failed, or cancelled); passed run deadlines failed."""
        report = self._run(operations.reap(self.keys, self.policy, self._clock(), limit))
        if any((report.requeued, report.failed, report.cancelled, report.timed_out)):
            logger.warning(
                "reaper: requeued %s, failed %s, cancelled %s, timed out %s",
                report.requeued,
                report.failed,
                report.cancelled,
                report.timed_out,
            )
        return report

    def expired_results(self, limit: int = 1000) -> list[str]:
        """Finished jobs whose retention is over, oldest first: delete their files, then ``delete`` them."""
        found = self._redis.zrangebyscore(self.keys.expiry, "-inf", self._clock(), start=0, num=limit)
        return [_text(value) for value in found]

    def delete(self, request_id: str) -> bool:
        """Remove a finished job, leaving a tombstone (410). Refuses (False) a job that is not terminal:
        an accepted job always ends completed, failed or cancelled. Works when Redis is full."""
        deleted = self._run(operations.delete(self.keys, self.policy, request_id))
        if deleted:
            logger.info("job %s deleted after retention", request_id)
        return deleted

    # -- uploads --------------------------------------------------------------------------------------------

    def reserve_upload(self, tenant: str, file_id: str, size_bytes: int) -> float:
        """Count an upload against its tenant's quota (``UploadQuotaExceeded``); when it expires."""
        expires_at = self._clock() + self.policy.retention_seconds
        self._run(operations.reserve_upload(self.keys, self.policy, tenant, file_id, size_bytes, expires_at))
        return expires_at

    def forget_upload(self, tenant: str, file_id: str) -> int:
        return self._run(operations.forget_upload(self.keys, tenant, file_id))

    def expired_uploads(self, limit: int = 1000) -> list[tuple[str, str]]:
        """(tenant, file id) of uploads past their retention: delete their bytes, then ``forget_upload``."""
        found = self._redis.zrangebyscore(self.keys.uploads, "-inf", self._clock(), start=0, num=limit)
        pairs = [_text(value).partition("/") for value in found]
        return [(tenant, file_id) for tenant, _, file_id in pairs]
