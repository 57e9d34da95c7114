"""Every job-store transition as one Lua script call: its arguments built, and its reply read, here once.

``JobStore`` (sync: workers, maintenance, the CLI) and ``AsyncJobStore`` (the HTTP API on its event loop)
both run these ``Call`` objects, so the two clients cannot drift apart. Time comes from the caller and every
timestamp goes to the scripts as a string, so the scripts are deterministic and tests control time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from functools import cache
from importlib.resources import files
from typing import Any, Generic, TypeVar

from serve.jobs.errors import (
    CancelConflict,
    IdempotencyConflict,
    JobNotFound,
    QueueFull,
    TenantQueueFull,
    UploadQuotaExceeded,
)
from serve.jobs.keys import Keys
from serve.jobs.records import (
    DEFAULT_MAX_ATTEMPTS,
    RETRIES_EXHAUSTED,
    TIME_LIMIT,
    JobError,
    JobRecord,
    JobStatus,
    compact_json,
)

T = TypeVar("T")
DAY = 24 * 3600.0
SCRIPTS = (
    "create",
    "claim",
    "heartbeat",
    "finish",
    "cancel",
    "release",
    "reap",
    "delete",
    "position",
    "upload",
    "forget_upload",
    "webhook_claim",
    "webhook_done",
)


@cache
def script_source(name: str) -> str:
    """``lib.lua`` (the shared functions) followed by the script itself."""
    folder = files("serve.jobs") / "lua"
    return (folder / "lib.lua").read_text() + "\n" + (folder / f"{name}.lua").read_text()


@dataclass(frozen=True)
class QueuePolicy:
    """How the queue treats jobs and tenants (``QueueConfig`` and the tenants' own limits feed it)."""

    lease_seconds: float = 60.0
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    max_releases: int = 5
    retention_seconds: float = DAY
    idempotency_seconds: float = DAY
    tombstone_seconds: float = 7 * DAY
    max_queued: int | None = 1000
    # A run that passes this many seconds fails ``time_limit`` (None: no limit).
    max_run_seconds: float | None = None
    # Caps of a tenant that the tokens file gives none of its own.
    tenant_max_queued: int = 100
    tenant_max_running: int = 4
    tenant_max_upload_bytes: int = 2 * 1024**3

    def __post_init__(self) -> None:
        positive = ("lease_seconds", "retention_seconds", "idempotency_seconds", "tombstone_seconds")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts!r}")
        if self.max_releases < 0:
            raise ValueError(f"max_releases must not be negative, got {self.max_releases!r}")
        if self.max_queued is not None and self.max_queued < 0:
            raise ValueError(f"max_queued must not be negative, got {self.max_queued!r}")
        if self.max_run_seconds is not None and self.max_run_seconds <= 0:
            raise ValueError(f"max_run_seconds must be positive, got {self.max_run_seconds!r}")
        for name in ("tenant_max_queued", "tenant_max_running", "tenant_max_upload_bytes"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class TenantLimits:
    """One tenant's own caps; None keeps the policy's default."""

    max_queued: int | None = None
    max_running: int | None = None
    max_upload_bytes: int | None = None

    def encoded(self) -> str:
        values = (self.max_queued, self.max_running, self.max_upload_bytes)
        return ",".join("-1" if value is None else str(int(value)) for value in values)


@dataclass(frozen=True)
class Call(Generic[T]):
    """One script run: which script, its ARGV (the key prefix first), and how to read its reply."""

    script: str
    args: list[Any]
    read: Callable[[Any], T]


class Beat(StrEnum):
    """A heartbeat's answer: go on, or stop because of what happened to the job."""

    OK = "ok"
    LOST = "lost"
    CANCEL = "cancel"
    TIME_LIMIT = "time_limit"


@dataclass(frozen=True)
class CancelOutcome:
    record: JobRecord
    # The job was running: its worker ends it cancelled at its next step.
    pending: bool


@dataclass(frozen=True)
class ReapReport:
    requeued: list[str]
    failed: list[str]
    cancelled: list[str]
    timed_out: list[str]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _num(value: float) -> str:
    return repr(float(value))


def record_from_flat(flat: Sequence[bytes | str]) -> JobRecord:
    items = list(flat)
    return JobRecord.from_redis_hash(dict(zip(items[0::2], items[1::2], strict=True)))


def record_of(data: Mapping[bytes | str, bytes | str], tenant: str | None) -> JobRecord | None:
    """The record in a job hash, or None if absent or owned by another tenant (``tenant=None``: any)."""
    if not data:
        return None
    record = JobRecord.from_redis_hash(data)
    return None if tenant is not None and record.tenant != tenant else record


def _error_json(code: str, message: str) -> str:
    return compact_json(JobError(code, message).to_dict())


def _exhausted(policy: QueuePolicy) -> str:
    return _error_json(
        RETRIES_EXHAUSTED,
        f"The job was started {policy.max_attempts} times and its worker stopped responding each time.",
    )


def _timed_out(policy: QueuePolicy) -> str:
    return _error_json(TIME_LIMIT, f"The job ran longer than the {policy.max_run_seconds:g} s it is allowed.")


# -- submit, read, cancel ------------------------------------------------------------------------------------


def create(
    keys: Keys,
    policy: QueuePolicy,
    record: JobRecord,
    now: float,
    idempotency_key: str | None = None,
    body_hash: str | None = None,
) -> Call[tuple[JobRecord, bool]]:
    """Store a new queued job: (record, created); created is False for an idempotent replay, which is
    answered even when the queue is full (the job was accepted before)."""
    if idempotency_key is not None and not body_hash:
        raise ValueError("an idempotency key needs the hash of the request body")
    stored = replace(
        record,
        status=JobStatus.IN_QUEUE,
        created_at=now,
        updated_at=now,
        started_at=None,
        finished_at=None,
        attempt=0,
        max_attempts=policy.max_attempts,
        progress=0.0,
        eta_seconds=None,
        error=None,
        output_key=None,
        expires_at=None,
        cancel_requested=False,
        lease_owner=None,
        lease_expires_at=None,
        run_deadline_at=None,
        idempotency_key=idempotency_key,
        webhook_attempts=0,
        webhook_delivered=0,
        webhook_failed=0,
        webhook_last_error=None,
    )
    suffix = "" if idempotency_key is None else keys.idempotency_suffix(record.tenant, idempotency_key)

    def read(reply: Any) -> tuple[JobRecord, bool]:
        outcome = _text(reply[0])
        if outcome in ("created", "existing"):
            return record_from_flat(reply[1]), outcome == "created"
        if outcome == "conflict":
            raise IdempotencyConflict(_text(reply[1]))
        if outcome == "full":
            raise QueueFull(f"the queue already holds {policy.max_queued} jobs")
        if outcome == "tenant_full":
            raise TenantQueueFull(int(_text(reply[1])))
        raise ValueError(f"a job with request_id {record.request_id!r} already exists")

    pairs = [item for pair in stored.to_redis_hash().items() for item in pair]
    args = [
        keys.prefix,
        record.request_id,
        record.tenant,
        -1 if policy.max_queued is None else policy.max_queued,
        policy.tenant_max_queued,
        suffix,
        body_hash or "",
        int(policy.idempotency_seconds * 1000),
        *pairs,
    ]
    return Call("create", args, read)


def cancel(keys: Keys, policy: QueuePolicy, request_id: str, tenant: str, now: float) -> Call[CancelOutcome]:
    """Cancel a job: a queued one never runs; a running one ends cancelled at its worker's next step."""

    def read(reply: Any) -> CancelOutcome:
        outcome = _text(reply[0])
        if outcome == "missing":
            raise JobNotFound(request_id)
        record = record_from_flat(reply[1])
        if outcome == "conflict":
            raise CancelConflict(record)
        return CancelOutcome(record, pending=outcome == "cancelling")

    args = [keys.prefix, request_id, tenant, _num(now), _num(now + policy.retention_seconds)]
    return Call("cancel", args, read)


def queue_position(keys: Keys, request_id: str, tenant: str) -> Call[int | None]:
    """0-based: about how many queued jobs start before this one; None when it is not queued."""
    return Call(
        "position", [keys.prefix, request_id, tenant], lambda reply: None if reply < 0 else int(reply)
    )


# -- workers -------------------------------------------------------------------------------------------------


def claim(keys: Keys, policy: QueuePolicy, worker_id: str, now: float) -> Call[JobRecord | None]:
    """The next job for one attempt under a lease, fairly across tenants; None when nothing can run."""
    deadline = "" if policy.max_run_seconds is None else _num(now + policy.max_run_seconds)
    args = [
        keys.prefix,
        worker_id,
        _num(now),
        _num(now + policy.lease_seconds),
        deadline,
        policy.tenant_max_running,
        _exhausted(policy),
        _num(now + policy.retention_seconds),
    ]
    return Call(
        "claim", args, lambda reply: record_from_flat(reply[1]) if _text(reply[0]) == "claimed" else None
    )


def heartbeat(
    keys: Keys,
    policy: QueuePolicy,
    request_id: str,
    worker_id: str,
    now: float,
    *,
    extend: bool,
    progress: float | None = None,
    eta_seconds: float | None = None,
) -> Call[Beat]:
    """Report progress and, when ``extend``, renew the lease (a stalled job's is let expire)."""
    if progress is not None and not 0.0 <= progress <= 1.0:
        raise ValueError(f"progress must be within [0, 1], got {progress!r}")
    if eta_seconds is not None and eta_seconds < 0:
        raise ValueError(f"eta_seconds must not be negative, got {eta_seconds!r}")
    args = [
        keys.prefix,
        request_id,
        worker_id,
        _num(now),
        _num(now + policy.lease_seconds) if extend else "",
        "" if progress is None else _num(progress),
        "" if eta_seconds is None else _num(eta_seconds),
    ]
    return Call("heartbeat", args, lambda reply: Beat(_text(reply)))


def finish(
    keys: Keys,
    policy: QueuePolicy,
    request_id: str,
    worker_id: str,
    now: float,
    status: JobStatus,
    values: Mapping[str, str],
) -> Call[JobStatus | None]:
    """End an owned job; the first of ``values`` names its result (output key, error, cancel flag). The
    status it ended in (a completion after a cancel ends it cancelled), or None when it is not owned."""
    args = [
        keys.prefix,
        request_id,
        worker_id,
        _num(now),
        _num(now + policy.retention_seconds),
        status.value,
        *[item for pair in values.items() for item in pair],
    ]
    return Call("finish", args, lambda reply: None if _text(reply) == "lost" else JobStatus(_text(reply)))


def release(keys: Keys, policy: QueuePolicy, request_id: str, worker_id: str, now: float) -> Call[bool]:
    args = [
        keys.prefix,
        request_id,
        worker_id,
        _num(now),
        policy.max_releases,
        _num(now + policy.retention_seconds),
    ]
    return Call("release", args, bool)


# -- maintenance ---------------------------------------------------------------------------------------------


def reap(keys: Keys, policy: QueuePolicy, now: float, limit: int) -> Call[ReapReport]:
    args = [
        keys.prefix,
        _num(now),
        limit,
        _num(now + policy.retention_seconds),
        _exhausted(policy),
        _timed_out(policy) if policy.max_run_seconds is not None else "",
    ]
    return Call("reap", args, lambda reply: ReapReport(*([_text(v) for v in part] for part in reply)))


def delete(keys: Keys, policy: QueuePolicy, request_id: str) -> Call[bool]:
    return Call("delete", [keys.prefix, request_id, int(policy.tombstone_seconds * 1000)], bool)


# -- uploads -------------------------------------------------------------------------------------------------


def reserve_upload(
    keys: Keys, policy: QueuePolicy, tenant: str, file_id: str, size_bytes: int, expires_at: float
) -> Call[None]:
    """Count an upload against the tenant's quota before its bytes are stored; ``UploadQuotaExceeded``."""

    def read(reply: Any) -> None:
        if int(reply[0]) != 1:
            raise UploadQuotaExceeded(int(reply[1]), int(reply[2]))

    args = [keys.prefix, tenant, file_id, size_bytes, _num(expires_at), policy.tenant_max_upload_bytes]
    return Call("upload", args, read)


def forget_upload(keys: Keys, tenant: str, file_id: str) -> Call[int]:
    """Take an upload off its tenant's quota (expired, or never stored); its size."""
    return Call("forget_upload", [keys.prefix, tenant, file_id], int)


# -- webhooks ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    """One webhook event to deliver: the job, the event type and the job's event-stream entry it is."""

    delivery_id: str
    request_id: str
    tenant: str
    type: str
    event_id: str
    created_at: float
    attempts: int

    @property
    def webhook_id(self) -> str:
        """The ``webhook-id`` of every attempt of this event: receivers deduplicate on it."""
        return f"msg_{self.request_id}_{self.event_id}"


def claim_deliveries(keys: Keys, now: float, lease_seconds: float, limit: int) -> Call[list[Delivery]]:
    """Due deliveries, leased for ``lease_seconds`` (each attempt counted now)."""

    def read(reply: Any) -> list[Delivery]:
        deliveries = []
        for delivery_id, flat in zip(reply[::2], reply[1::2], strict=True):
            fields = {_text(k): _text(v) for k, v in zip(flat[::2], flat[1::2], strict=True)}
            deliveries.append(
                Delivery(
                    delivery_id=_text(delivery_id),
                    request_id=fields["request_id"],
                    tenant=fields["tenant"],
                    type=fields["type"],
                    event_id=fields["event_id"],
                    created_at=float(fields["created_at"]),
                    attempts=int(fields["attempts"]),
                )
            )
        return deliveries

    return Call("webhook_claim", [keys.prefix, _num(now), _num(now + lease_seconds), limit], read)


def delivery_done(
    keys: Keys, delivery: Delivery, outcome: str, next_at: float | None = None, error: str = ""
) -> Call[int]:
    """Record an attempt's outcome: ``delivered``, ``retry`` (at ``next_at``) or ``gave_up``."""
    if outcome not in ("delivered", "retry", "gave_up") or (outcome == "retry") != (next_at is not None):
        raise ValueError(f"outcome {outcome!r} with next_at {next_at!r}")
    args = [keys.prefix, delivery.delivery_id, delivery.request_id, outcome, _num(next_at or 0), error[:500]]
    return Call("webhook_done", args, int)
