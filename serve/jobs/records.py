"""The job record: the durable state of one generation job, typed end to end.

The record, not a queue transport, is the source of truth for a job's status, so it carries everything the
status, result and cancel endpoints answer from and everything a worker needs to decide whether it still
owns the job (the lease). It holds what the job needs and nothing else: the generation settings, and for
each input where it was staged, its size and its hash, never the input's bytes or the reference the client
sent (a ``data:`` URI can be megabytes). Plain dataclasses: the engine side never sees pydantic.

In Redis every scalar is its own hash field, so the store's Lua scripts can read and change status, attempt
and lease without parsing JSON; the settings, inputs and results are compact JSON strings only Python reads.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from typing import Any

DEFAULT_MAX_ATTEMPTS = 3

# error.code of a job whose executions all died (lease expired) or that could not be finished in the
# allowed number of attempts.
RETRIES_EXHAUSTED = "retries_exhausted"
# error.code of a job whose run passed the configured maximum run time.
TIME_LIMIT = "time_limit"
# error.code of a job whose staged inputs are no longer in storage: no run of it can succeed.
INPUTS_MISSING = "inputs_missing"


class JobStatus(StrEnum):
    """The statuses of the HTTP API (``failed`` is the API's extension)."""

    IN_QUEUE = "in_queue"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})
#: The status fields a change of state can alter: an entry of a job's event stream holds them (``lib.lua``).
EVENT_FIELDS = frozenset(
    {"status", "progress", "eta_seconds", "attempt", "cancel_requested", "started_at", "finished_at", "error"}
)
#: The events a job's webhook may be sent, and those it gets unless the request chooses.
WEBHOOK_EVENTS = ("started", "progress", "completed", "failed", "cancelled")
DEFAULT_WEBHOOK_EVENTS = ("completed", "failed", "cancelled")


@dataclass(frozen=True)
class JobError:
    """A typed failure shown to the client: a stable machine ``code`` and a human sentence."""

    code: str
    message: str

    def __post_init__(self) -> None:
        if not isinstance(self.code, str) or not self.code:
            raise ValueError(f"JobError.code must be a non-empty string, got {self.code!r}")
        if not isinstance(self.message, str):
            raise ValueError(f"JobError.message must be a string, got {type(self.message).__name__}")

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


@dataclass(frozen=True)
class JobSettings:
    """What the engine generates from: the request's settings, resolved (sizes in pixels), no inputs."""

    prompt: str
    width: int
    height: int
    frames: int
    seed: int
    steps: int
    shift: float
    cfg: float
    audio_cfg: float = 1.0  # absent from records written before audio guidance existed
    #: Two speakers: when each speaks (``pipeline.two_speakers.SpeakingOrder``); None: one speaker.
    order: str | None = None
    #: Two speakers' boxes ``[left, top, right, bottom]`` in the portrait's pixels (None: its halves).
    boxes: tuple[tuple[float, ...], ...] | None = None

    def __post_init__(self) -> None:
        if self.boxes is not None:  # JSON gives lists back; keep the record hashable and comparable
            object.__setattr__(self, "boxes", tuple(tuple(float(v) for v in box) for box in self.boxes))


class InputSource(StrEnum):
    """How an input reached the server (for logs and the reproducibility record; never re-fetched)."""

    URL = "url"
    DATA = "data"
    UPLOAD = "upload"
    EXAMPLE = "example"


@dataclass(frozen=True)
class StagedInput:
    """One input as the sampler finds it: the storage key of its bytes, their size and SHA-256."""

    key: str
    sha256: str
    size_bytes: int
    source: InputSource

    def __post_init__(self) -> None:
        object.__setattr__(self, "source", InputSource(self.source))


# How each scalar field is written into a Redis hash; the rest are strings or the JSON fields below.
_FLOAT_FIELDS = frozenset(
    {
        "created_at",
        "started_at",
        "finished_at",
        "updated_at",
        "progress",
        "eta_seconds",
        "expires_at",
        "lease_expires_at",
        "run_deadline_at",
    }
)
_INT_FIELDS = frozenset(
    {"attempt", "max_attempts", "webhook_attempts", "webhook_delivered", "webhook_failed"}
)
_BOOL_FIELDS = frozenset({"cancel_requested"})


@dataclass
class JobRecord:
    """One job. Times are epoch seconds; ``None`` means "not yet" (or "not applicable")."""

    request_id: str
    tenant: str
    settings: JobSettings
    # Role ("image", "audio") -> where its bytes are staged.
    inputs: dict[str, StagedInput] = field(default_factory=dict)
    status: JobStatus = JobStatus.IN_QUEUE
    created_at: float = 0.0
    # Start of the current (latest) attempt.
    started_at: float | None = None
    finished_at: float | None = None
    updated_at: float = 0.0
    attempt: int = 0
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    progress: float = 0.0
    eta_seconds: float | None = None
    error: JobError | None = None
    # Set on completion: the storage key of the video of the run that won (each run writes its own key).
    output_key: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    reproducibility: dict[str, Any] = field(default_factory=dict)
    # After this moment the result is gone (the API answers 410) and the record may be deleted.
    expires_at: float | None = None
    # A client asked to cancel the running job; its worker stops at the next step and ends it cancelled.
    cancel_requested: bool = False
    lease_owner: str | None = None
    lease_expires_at: float | None = None
    # The current run must have ended by then (the configured maximum run time), or it fails ``time_limit``.
    run_deadline_at: float | None = None
    idempotency_key: str | None = None
    # Where to deliver this job's webhooks, and which events (comma-separated ``WEBHOOK_EVENTS``); the store
    # counts the delivery attempts, the events delivered and those given up, and keeps the last error.
    webhook: str | None = None
    webhook_events: str | None = None
    webhook_attempts: int = 0
    webhook_delivered: int = 0
    webhook_failed: int = 0
    webhook_last_error: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.request_id, str) or not self.request_id:
            raise ValueError(f"request_id must be a non-empty string, got {self.request_id!r}")
        if not isinstance(self.tenant, str) or not self.tenant:
            raise ValueError(f"tenant must be a non-empty string, got {self.tenant!r}")
        if not isinstance(self.settings, JobSettings):
            raise ValueError("settings must be JobSettings")
        self.status = JobStatus(self.status)
        if not 0.0 <= self.progress <= 1.0:
            raise ValueError(f"progress must be within [0, 1], got {self.progress!r}")

    @property
    def is_terminal(self) -> bool:
        return self.status.is_terminal

    def is_expired(self, now: float) -> bool:
        """Whether the retention period is over (the API answers 410 from then on)."""
        return self.expires_at is not None and now >= self.expires_at

    # -- Redis hash ---------------------------------------------------------------------------------------

    def to_redis_hash(self) -> dict[str, str]:
        """Field -> string; ``None`` fields are left out (absent means ``None``)."""
        out: dict[str, str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if f.name in _FLOAT_FIELDS:
                out[f.name] = repr(float(value))
            elif f.name in _INT_FIELDS:
                out[f.name] = str(int(value))
            elif f.name in _BOOL_FIELDS:
                out[f.name] = "1" if value else "0"
            elif f.name == "status":
                out[f.name] = value.value
            elif f.name == "settings":
                out[f.name] = compact_json(asdict(value))
            elif f.name == "inputs":
                out[f.name] = compact_json({role: _staged_dict(staged) for role, staged in value.items()})
            elif f.name == "error":
                out[f.name] = compact_json(value.to_dict())
            elif f.name in ("timings", "reproducibility"):
                out[f.name] = compact_json(value)
            else:
                out[f.name] = str(value)
        return out

    @classmethod
    def from_redis_hash(cls, mapping: Mapping[str | bytes, str | bytes]) -> JobRecord:
        """Inverse of ``to_redis_hash``. Fields starting with ``_`` are the store's own bookkeeping."""
        known = {f.name for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for raw_key, raw_value in mapping.items():
            key = raw_key.decode() if isinstance(raw_key, bytes) else raw_key
            value = raw_value.decode() if isinstance(raw_value, bytes) else raw_value
            if key not in known:
                continue
            try:
                kwargs[key] = _decode_field(key, value)
            except (ValueError, TypeError, KeyError) as exc:
                raise ValueError(f"job record field {key!r} holds an unreadable value") from exc
        missing = {"request_id", "tenant", "settings"} - kwargs.keys()
        if missing:
            raise ValueError(f"a stored job record lacks {sorted(missing)}")
        return cls(**kwargs)


def _decode_field(key: str, value: str) -> Any:
    if key in _FLOAT_FIELDS:
        return float(value)
    if key in _INT_FIELDS:
        return int(value)
    if key in _BOOL_FIELDS:
        return value == "1"
    if key == "settings":
        return JobSettings(**json.loads(value))
    if key == "inputs":
        return {role: StagedInput(**staged) for role, staged in json.loads(value).items()}
    if key == "error":
        return JobError(**json.loads(value))
    if key in ("timings", "reproducibility"):
        return json.loads(value)
    return value


def _staged_dict(staged: StagedInput) -> dict[str, Any]:
    return {**asdict(staged), "source": staged.source.value}


def compact_json(value: Any) -> str:
    """The store's JSON: no spaces, sorted keys (so equal values are equal strings)."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def record_at(stored: Mapping[str, str], change: Mapping[str, str]) -> JobRecord:
    """The job as one change (an event-stream entry) left it: its stored hash with that change's fields."""
    fixed = {key: value for key, value in stored.items() if key not in EVENT_FIELDS}
    return JobRecord.from_redis_hash({**fixed, **change})
