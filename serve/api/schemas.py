"""The API's request and response bodies: pydantic models that *are* the HTTP schema.

Field names of ``SubmitRequest`` are RunComfy's (``241_positive_prompt`` ...) and part of the contract; the
Python names are readable aliases of them. Validation is strict where a lenient coercion would hide a client
bug (``true`` or ``"7"`` for an integer). The engine never sees pydantic: ``to_settings`` converts a validated
request into the plain ``JobSettings`` dataclass, as vLLM's request models convert to ``SamplingParams``.
"""

from __future__ import annotations

import copy
import hashlib
import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from serve import fields
from serve.api.knobs import (
    NO_FACTS,
    SIZE_OPTIONS,
    FrameCount,
    InputFacts,
    SizeOption,
    SubmitFields,
    Text,
    audio_cfg_field,
    cfg_field,
    frames_field,
    match_audio_length_field,
    resolve_frames,
    seed_field,
    shift_field,
    size_field,
    steps_field,
)
from serve.fields import EXAMPLE_AUDIO, EXAMPLE_IMAGE
from serve.jobs.records import JobSettings

if TYPE_CHECKING:
    from serve.jobs.records import JobRecord

MAX_PROMPT_CHARS = 2000
DEFAULT_PROMPT = "a woman is talking and waving hands"
JobStatusName = Literal["in_queue", "in_progress", "completed", "cancelled", "failed"]

_SIZE_PATTERN = re.compile(r"^(\d+)x(\d+) \(\d+:\d+\)$")


def _parse_size(option: str) -> tuple[int, int]:
    match = _SIZE_PATTERN.match(option)
    if match is None:  # pragma: no cover - guarded by the test over all options
        raise ValueError(f"size option {option!r} is not 'WxH (a:b)'")
    return int(match.group(1)), int(match.group(2))


SIZES: dict[str, tuple[int, int]] = {option: _parse_size(option) for option in SIZE_OPTIONS}


class SubmitRequest(SubmitFields):
    """The body of ``POST /v1/models/community/infinite-talk/image-to-video``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True, title="Input")

    prompt: Text = Field(
        alias=fields.PROMPT,
        max_length=MAX_PROMPT_CHARS,
        title="Prompt",
        description=f"What the video shows; a non-empty sentence of at most {MAX_PROMPT_CHARS} characters.",
        examples=[DEFAULT_PROMPT],
    )
    image: Text = Field(
        alias=fields.IMAGE,
        title="Image",
        description=(
            "The portrait: an https:// URL, a data: URI, the id of a file uploaded with POST /v1/files "
            f"(file_...), or the example name {EXAMPLE_IMAGE!r}. The bytes must decode as an image."
        ),
        examples=[EXAMPLE_IMAGE],
    )
    audio: Text = Field(
        alias=fields.AUDIO,
        title="Audio",
        description=(
            "The speech: an https:// URL, a data: URI, the id of a file uploaded with POST /v1/files "
            f"(file_...), or the example name {EXAMPLE_AUDIO!r}. The bytes must decode as audio."
        ),
        examples=[EXAMPLE_AUDIO],
    )
    size: SizeOption = size_field(fields.SIZE)
    frames: FrameCount = frames_field(fields.FRAMES)
    seed: int = seed_field(fields.SEED)
    steps: int = steps_field(fields.STEPS)
    shift: float = shift_field(fields.SHIFT)
    cfg: float = cfg_field(fields.CFG)
    audio_cfg: float = audio_cfg_field()
    match_audio_length: bool = match_audio_length_field()

    def references(self) -> dict[str, tuple[str, str]]:
        """The inputs to fetch: role → (request field, reference)."""
        return {"image": (fields.IMAGE, self.image), "audio": (fields.AUDIO, self.audio)}

    @property
    def follows_speech(self) -> bool:
        """Whether the video is as long as the speech (then the speech must last a frame at least)."""
        return self.match_audio_length

    def speech_seconds(self, durations: dict[str, float]) -> float:
        """How long the speech lasts, from each audio input's duration (by role)."""
        return durations["audio"]

    def to_settings(self, facts: InputFacts = NO_FACTS) -> JobSettings:
        """The engine's settings; the speech's length in frames (``facts``) is the frame count when
        ``match_audio_length`` is set, and required then."""
        width, height = SIZES[self.size]
        frames = resolve_frames(self.frames, self.match_audio_length, facts)
        return JobSettings(
            prompt=self.prompt,
            width=width,
            height=height,
            frames=frames,
            **self.sampling_knobs(),
        )

    def body_hash(self) -> str:
        """SHA-256 of the validated request (input references included), the identity of an idempotent
        resubmission: the same fields spelled differently hash the same, and so does a field left at its
        default, whether sent or not (so a field added later does not change earlier bodies' hashes)."""
        return hashlib.sha256(self.model_dump_json(exclude_defaults=True).encode()).hexdigest()


# -- responses -----------------------------------------------------------------------------------------------


class _Response(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SubmitResponse(_Response):
    request_id: str = Field(description="Identifier of the accepted job.")
    status_url: str = Field(
        description="Absolute URL of GET .../status.", json_schema_extra={"format": "uri"}
    )
    result_url: str = Field(
        description="Absolute URL of GET .../result.", json_schema_extra={"format": "uri"}
    )
    cancel_url: str = Field(
        description="Absolute URL of POST .../cancel.", json_schema_extra={"format": "uri"}
    )


class ErrorInfo(_Response):
    code: str = Field(description="Stable machine-readable code, e.g. invalid_audio or retries_exhausted.")
    message: str = Field(description="Human-readable sentence.")


class StatusResponse(_Response):
    request_id: str
    status: JobStatusName = Field(description="failed is an extension of RunComfy's states.")
    queue_position: int | None = Field(None, ge=0, description="0-based position while in_queue.")
    progress: float | None = Field(None, ge=0, le=1, description="Fraction of the sampling work done.")
    eta_seconds: float | None = Field(None, ge=0, description="Estimated seconds until completion.")
    created_at: datetime
    started_at: datetime | None = Field(None, description="Start of the latest attempt.")
    finished_at: datetime | None = None
    attempt: int | None = Field(None, ge=0, description="Executions started so far (retries count).")
    cancel_requested: bool | None = Field(
        None,
        description="Extension: a cancel of the running job was accepted; it ends cancelled after its step.",
    )
    error: ErrorInfo | None = Field(None, description="Why the job failed (status failed only).")

    @classmethod
    def from_record(cls, record: JobRecord, *, queue_position: int | None = None) -> StatusResponse:
        return cls(**_status_fields(record, queue_position))


class VideoOutput(_Response):
    video: str = Field(
        description="URL of the MP4 (signed or presigned, expiring).", json_schema_extra={"format": "uri"}
    )


class StageTimings(BaseModel):
    """Seconds spent per stage; stages a job did not reach are absent."""

    model_config = ConfigDict(extra="allow")

    fetch_inputs: float | None = None
    audio_encode: float | None = None
    text_encode: float | None = None
    sampling: float | None = None
    vae_decode: float | None = None
    mux: float | None = None
    upload: float | None = None


class WebhookDeliveries(_Response):
    url: str = Field(description="Where this job's events are delivered.")
    events: list[str] = Field(description="The events chosen.")
    delivered: int = Field(ge=0, description="Events delivered (a 2xx answer).")
    failed: int = Field(ge=0, description="Events given up after the retry window.")
    attempts: int = Field(ge=0, description="Delivery attempts so far, retries included.")
    last_error: str | None = Field(None, description="Why the last failed attempt failed.")


class ResultResponse(StatusResponse):
    output: VideoOutput | None = Field(None, description="Present once completed.")
    timings: StageTimings | None = None
    reproducibility: dict[str, Any] | None = Field(
        None, description="Seed, resolved sizes, model/adapter/LoRA identities and code version of the run."
    )
    expires_at: datetime | None = Field(None, description="After this moment the result is gone (410).")
    webhook: WebhookDeliveries | None = Field(None, description="Extension: the job's webhook deliveries.")

    @classmethod
    def from_record(
        cls, record: JobRecord, *, queue_position: int | None = None, video_url: str | None = None
    ) -> ResultResponse:
        """``video_url`` is the download URL of ``record.output['video']``, made by the storage backend."""
        return cls(
            **_status_fields(record, queue_position),
            output=VideoOutput(video=video_url) if video_url is not None else None,
            timings=StageTimings(**record.timings) if record.timings else None,
            reproducibility=dict(record.reproducibility) or None,
            expires_at=_datetime(record.expires_at),
            webhook=_webhook(record),
        )


class FileUploadResponse(_Response):
    file_id: str = Field(description="Use as 284_image or 125_audio in a submit (this tenant only).")
    filename: str | None = Field(None, description="Name the client sent, if any.")
    size_bytes: int = Field(ge=0, description="Size of the stored file in bytes.")
    created_at: datetime
    expires_at: datetime | None = Field(None, description="After this moment the file is deleted.")


class WebhookSecretResponse(_Response):
    secret: str = Field(
        description="Verifies this tenant's webhook deliveries (Standard Webhooks, whsec_...)."
    )
    previous_secret: str | None = Field(
        None, description="The secret before the last rotation; deliveries are signed with both until then."
    )
    previous_valid_until: datetime | None = None


class ErrorDetail(_Response):
    code: str = Field(description="Stable machine-readable code.")
    message: str = Field(description="Human-readable sentence; never a stack trace.")
    details: list[dict[str, Any]] = Field(
        default_factory=list, description="e.g. one entry per invalid field."
    )


class ErrorBody(_Response):
    """The one shape of every error response."""

    error: ErrorDetail


def _datetime(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, tz=UTC)


def _webhook(record: JobRecord) -> WebhookDeliveries | None:
    if record.webhook is None:
        return None
    return WebhookDeliveries(
        url=record.webhook,
        events=(record.webhook_events or "").split(","),
        delivered=record.webhook_delivered,
        failed=record.webhook_failed,
        attempts=record.webhook_attempts,
        last_error=record.webhook_last_error,
    )


def _status_fields(record: JobRecord, queue_position: int | None) -> dict[str, Any]:
    status = record.status.value
    error = record.error
    return {
        "request_id": record.request_id,
        "status": status,
        "queue_position": queue_position if status == "in_queue" else None,
        "progress": record.progress,
        "eta_seconds": record.eta_seconds,
        "created_at": _datetime(record.created_at),
        "started_at": _datetime(record.started_at),
        "finished_at": _datetime(record.finished_at),
        "attempt": record.attempt,
        "cancel_requested": True if record.cancel_requested and status == "in_progress" else None,
        "error": ErrorInfo(code=error.code, message=error.message) if error is not None else None,
    }


# -- the /schema endpoint ------------------------------------------------------------------------------------

# The seed page spells JSON Schema's "number" as "float"; RunComfy clients read that page's shape.
_SCHEMA_TYPE_NAMES = {"number": "float"}
_SCHEMA_KEYS = ("title", "description", "type", "enum", "default", "minimum", "maximum", "maxLength")

_OUTPUT_SCHEMA: dict[str, Any] = {
    "output": {
        "type": "object",
        "properties": {
            "image": {"type": "string", "format": "uri", "description": "single image URL"},
            "video": {"type": "string", "format": "uri", "description": "single video URL"},
            "images": {
                "type": "array",
                "description": "multiple image URLs",
                "items": {"type": "string", "format": "uri"},
            },
            "videos": {
                "type": "array",
                "description": "multiple video URLs",
                "items": {"type": "string", "format": "uri"},
            },
        },
    }
}


def input_json_schema() -> dict[str, Any]:
    """The input schema in the seed page's shape (title "Input", required, flat properties)."""
    generated = SubmitRequest.model_json_schema(by_alias=True, mode="validation")
    properties: dict[str, Any] = {}
    for name, spec in generated["properties"].items():
        prop = {key: spec[key] for key in _SCHEMA_KEYS if key in spec}
        if "default" not in prop and spec.get("examples"):
            # Required fields show RunComfy's example value as their default, as the seed page does.
            prop["default"] = spec["examples"][0]
        prop["type"] = _SCHEMA_TYPE_NAMES.get(prop.get("type", "string"), prop.get("type", "string"))
        prop.setdefault("description", "")
        properties[name] = prop
    return {
        "type": "object",
        "title": "Input",
        "required": list(generated["required"]),
        "properties": properties,
    }


def output_json_schema() -> dict[str, Any]:
    """The output schema of the seed page (this model fills ``output.video`` only)."""
    return copy.deepcopy(_OUTPUT_SCHEMA)
