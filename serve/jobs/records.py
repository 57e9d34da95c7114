"""The job record: the durable state of one generation job.

The record, not the queue transport, is the source of truth for a job's status, so it carries everything the
status, result and cancel endpoints answer from and everything a worker needs to decide whether it still
owns the job (the lease). Plain dataclasses: the engine side never sees pydantic.

Two encodings: ``to_dict``/``to_json`` for APIs and events, and ``to_redis_hash`` for the store, where every
scalar is its own hash field so the store's Lua scripts can read and change status, attempt and lease
without parsing JSON (dicts stay opaque JSON strings that only Python reads).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any

DEFAULT_MAX_ATTEMPTS = 3

# error.code of a job whose executions all died (lease expired) or that could not be finished in the
# allowed number of attempts.
RETRIES_EXHAUSTED = "retries_exhausted"


class JobStatus(str, Enum):
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

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobError:
        if not isinstance(data, Mapping):
            raise ValueError(f"a job error must be an object, got {type(data).__name__}")
        return cls(code=data.get("code", ""), message=data.get("message", ""))


# How each field is written into a Redis hash. Fields left out of these sets are strings.
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
    }
)
_INT_FIELDS = frozenset({"attempt", "max_attempts"})
_JSON_FIELDS = frozenset({"params", "inputs", "output", "timings", "reproducibility"})


@dataclass
class JobRecord:
    """One job. Times are epoch seconds; ``None`` means "not yet" (or "not applicable")."""

    request_id: str
    tenant: str
    status: JobStatus = JobStatus.IN_QUEUE
    # Generation parameters (the validated request body in the engine's own names).
    params: dict[str, Any] = field(default_factory=dict)
    # Staged inputs: role ("image", "audio") -> storage key.
    inputs: dict[str, str] = field(default_factory=dict)
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
    # Set on completion: e.g. {"video": <storage key>}.
    output: dict[str, str] | None = None
    timings: dict[str, float] = field(default_factory=dict)
    reproducibility: dict[str, Any] = field(default_factory=dict)
    # After this moment the result is gone (the API answers 410) and the record may be deleted.
    expires_at: float | None = None
    cancel_requested: bool = False
    lease_owner: str | None = None
    lease_expires_at: float | None = None
    idempotency_key: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.request_id, str) or not self.request_id:
            raise ValueError(f"request_id must be a non-empty string, got {self.request_id!r}")
        if not isinstance(self.tenant, str) or not self.tenant:
            raise ValueError(f"tenant must be a non-empty string, got {self.tenant!r}")
        self.status = JobStatus(self.status)
        if isinstance(self.error, Mapping):
            self.error = JobError.from_dict(self.error)
        if not 0.0 <= self.progress <= 1.0:
            raise ValueError(f"progress must be within [0, 1], got {self.progress!r}")

    @property
    def is_terminal(self) -> bool:
        return self.status.is_terminal

    def is_expired(self, now: float) -> bool:
        """Whether the retention period is over (the API answers 410 from then on)."""
        return self.expires_at is not None and now >= self.expires_at

    # -- JSON ---------------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["status"] = self.status.value
        data["error"] = self.error.to_dict() if self.error is not None else None
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobRecord:
        """Build a record; keys this version does not know are ignored so a rolling upgrade can add fields."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a job record must be an object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        missing = {"request_id", "tenant"} - kwargs.keys()
        if missing:
            raise ValueError(f"a job record needs {sorted(missing)}")
        return cls(**kwargs)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> JobRecord:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"a job record must be JSON: {exc}") from exc
        return cls.from_dict(data)

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
            elif f.name in _JSON_FIELDS:
                out[f.name] = json.dumps(value, separators=(",", ":"), sort_keys=True)
            elif f.name == "error":
                out[f.name] = json.dumps(value.to_dict(), separators=(",", ":"))
            elif f.name == "cancel_requested":
                out[f.name] = "1" if value else "0"
            elif f.name == "status":
                out[f.name] = value.value
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
                if key in _FLOAT_FIELDS:
                    kwargs[key] = float(value)
                elif key in _INT_FIELDS:
                    kwargs[key] = int(value)
                elif key in _JSON_FIELDS:
                    kwargs[key] = json.loads(value)
                elif key == "error":
                    kwargs[key] = JobError.from_dict(json.loads(value))
                elif key == "cancel_requested":
                    kwargs[key] = value == "1"
                else:
                    kwargs[key] = value
            except (ValueError, TypeError) as exc:
                raise ValueError(f"job record field {key!r} holds an unreadable value {value!r}") from exc
        missing = {"request_id", "tenant"} - kwargs.keys()
        if missing:
            raise ValueError(f"a stored job record lacks {sorted(missing)}")
        return cls(**kwargs)
