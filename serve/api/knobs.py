"""The generation settings every submit endpoint takes, as pydantic fields: one definition, each endpoint
naming them its way (the seed's node ids, or the later endpoints' plain names)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

from serve.jobs.records import DEFAULT_WEBHOOK_EVENTS

SEED_MIN = -(2**63)
# torch.manual_seed takes signed and unsigned 64-bit seeds; ComfyUI-style clients send seeds up to 2**64 - 1.
SEED_MAX = 2**64 - 1
AUDIO_CFG_MIN = 0.5
AUDIO_CFG_MAX = 10.0

# "W x H (aspect)", in the order of the seed page.
SizeOption = Literal[
    "480x480 (1:1)",
    "720x720 (1:1)",
    "480x720 (2:3)",
    "720x480 (3:2)",
    "540x960 (9:16)",
    "576x1024 (9:16)",
    "720x1280 (9:16)",
    "960x540 (16:9)",
    "1024x576 (16:9)",
    "1280x720 (16:9)",
]
SIZE_OPTIONS: tuple[str, ...] = get_args(SizeOption)


def _not_blank(value: str) -> str:
    if not value:
        raise PydanticCustomError("string_empty", "must not be empty or only whitespace")
    return value


def _integer(value: object) -> object:
    # A Literal accepts 125.0, and "125" is close enough to slip through other paths: insist on an integer.
    if type(value) is not int:
        raise PydanticCustomError("int_type", "Input should be a valid integer")
    return value


#: A string field that is stripped and must not end up empty (prompts, input references).
Text = Annotated[str, StringConstraints(strict=True, strip_whitespace=True), AfterValidator(_not_blank)]
FrameCount = Annotated[Literal[125, 250], BeforeValidator(_integer)]


@dataclass(frozen=True)
class InputFacts:
    """What submit learned by probing a request's inputs, which its settings may depend on: the speech's
    length in whole frames (capped), and each picture's or video's size in pixels by role."""

    speech_frames: int | None = None
    sizes: Mapping[str, tuple[int, int]] = field(default_factory=dict)


#: Nothing probed: enough for requests whose settings need no input facts (a fixed frame count).
NO_FACTS = InputFacts()


def resolve_frames(frames: int | None, follow_speech: bool, facts: InputFacts) -> int:
    """The job's frame count: the request's, or when it follows the speech the speech's (required then)."""
    if frames is not None and not follow_speech:
        return frames
    if facts.speech_frames is None:
        raise ValueError("a video as long as the speech needs the speech's frame count")
    return facts.speech_frames


def size_field(alias: str | None = None) -> Any:
    return Field(
        "720x720 (1:1)",
        alias=alias,
        title="Resolution (W:H)",
        description="Width x height of the video in pixels.",
    )


def frames_field(alias: str | None = None) -> Any:
    return Field(
        125,
        alias=alias,
        title="Number of Frames",
        description="Length of the video in frames at 25 fps (125 = 5 s, 250 = 10 s).",
    )


def seed_field(alias: str | None = None) -> Any:
    return Field(
        96860978,
        alias=alias,
        strict=True,
        ge=SEED_MIN,
        le=SEED_MAX,
        title="Seed",
        description="Random seed; the same seed and inputs reproduce the same video on the same setup.",
    )


def steps_field(alias: str | None = None) -> Any:
    return Field(
        7,
        alias=alias,
        strict=True,
        ge=6,
        le=20,
        title="Steps",
        description="Number of denoising iterations; more steps refine detail and stability but take longer.",
    )


def shift_field(alias: str | None = None) -> Any:
    return Field(
        11,
        alias=alias,
        strict=True,
        ge=1,
        le=15,
        allow_inf_nan=False,
        title="Shift",
        description=(
            "Offsets the diffusion sampling schedule, trading stability for stronger motion/style as the "
            "value increases."
        ),
    )


def cfg_field(alias: str | None = None) -> Any:
    return Field(
        1,
        alias=alias,
        strict=True,
        ge=0.6,
        le=2,
        allow_inf_nan=False,
        title="Guidance Scale",
        description=(
            "Controls how strongly the output adheres to the prompt versus allowing creative variation."
        ),
    )


def audio_cfg_field() -> Any:
    return Field(
        1,
        strict=True,
        ge=AUDIO_CFG_MIN,
        le=AUDIO_CFG_MAX,
        allow_inf_nan=False,
        title="Audio Guidance Scale",
        description=(
            "Extension: how strongly the lips follow the speech. 1 adds no model pass; another value adds "
            "one per step (the reference suggests 2 with a step-distilled LoRA, 4 without)."
        ),
    )


def match_audio_length_field() -> Any:
    return Field(
        False,
        strict=True,
        title="Match Audio Length",
        description=(
            "Extension: make the video exactly as long as the speech (whole frames at 25 fps, up to the "
            "server's cap, 1000 frames = 40 s by default), instead of the frame count."
        ),
    )


WebhookEvent = Literal["started", "progress", "completed", "failed", "cancelled"]


def webhook_field() -> Any:
    return Field(
        None,
        max_length=2000,
        title="Webhook",
        description=(
            "Extension: an https:// URL this job's events are POSTed to, signed per Standard Webhooks "
            "with the tenant's secret (GET /v1/webhooks/secret); retried with backoff for a day. The body "
            "is the /status (or, at the end, /result) JSON plus its event type."
        ),
    )


def webhook_events_field() -> Any:
    return Field(
        None,
        min_length=1,
        title="Webhook Events",
        description=(
            "Extension: which events the webhook gets: started, progress, completed, failed, cancelled "
            "(default: the three terminal ones). Needs webhook."
        ),
    )


class SubmitFields(BaseModel):
    """What every submit body shares: the webhook extension fields, and its sampling knobs as settings."""

    webhook: Text | None = webhook_field()
    webhook_events: list[WebhookEvent] | None = webhook_events_field()

    @field_validator("webhook_events")
    @classmethod
    def _events_need_a_webhook(cls, events: list[str] | None, info: ValidationInfo) -> list[str] | None:
        if events is not None and info.data.get("webhook") is None:
            raise PydanticCustomError("webhook_missing", "webhook_events needs a webhook URL")
        return events

    def sampling_knobs(self) -> dict[str, Any]:
        """The knobs every endpoint has (seed, steps, shift, cfg, audio_cfg), as ``JobSettings`` fields."""
        knobs = {name: getattr(self, name) for name in ("seed", "steps", "shift", "cfg", "audio_cfg")}
        return {**knobs, **{name: float(knobs[name]) for name in ("shift", "cfg", "audio_cfg")}}

    def chosen_webhook_events(self) -> str | None:
        """The events the webhook gets, comma-separated (the store's form); None without a webhook."""
        if self.webhook is None:
            return None
        return ",".join(dict.fromkeys(self.webhook_events or DEFAULT_WEBHOOK_EVENTS))
