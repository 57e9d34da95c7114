"""The body of ``POST /v1/models/community/infinite-talk/fast/multi``: two people in one portrait.

RunComfy's example body is ``{"image": URL, "left_audio": URL, "right_audio": URL}``; WaveSpeed's adds the
speaking ``order``. Everything else is this API's: the seed endpoint's knobs under plain names, and a box per
speaker (both or neither; without them the left and right halves of the portrait).
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from pipeline.boxes import Box as SpeakerBox
from pipeline.errors import InputError
from serve import fields
from serve.api.knobs import (
    NO_FACTS,
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
from serve.api.schemas import MAX_PROMPT_CHARS, SIZES
from serve.fields import EXAMPLE_AUDIO, EXAMPLE_IMAGE
from serve.inputs.errors import InputRejected
from serve.jobs.records import JobSettings

DEFAULT_TWO_SPEAKER_PROMPT = "two people are talking to each other"

_Coordinate = Annotated[float, Field(strict=True, ge=0, allow_inf_nan=False)]
Box = Annotated[list[_Coordinate], Field(min_length=4, max_length=4)]

_REFERENCE_FORMS = (
    "an https:// URL, a data: URI, the id of a file uploaded with POST /v1/files (file_...), or the example "
    "name"
)


def _speech_field(side: str) -> object:
    return Field(
        title=f"{side.title()} Audio",
        description=(
            f"The speech of the person on the {side}: {_REFERENCE_FORMS} {EXAMPLE_AUDIO!r}. "
            "The bytes must decode as audio."
        ),
        examples=[EXAMPLE_AUDIO],
    )


def _box_field(side: str) -> object:
    return Field(
        None,
        title=f"{side.title()} Box",
        description=(
            f"Where the person on the {side} is: [left, top, right, bottom] in pixels of the image. Give "
            "both boxes or neither (then the left and right halves of the image)."
        ),
    )


class TwoSpeakerRequest(SubmitFields):
    model_config = ConfigDict(extra="forbid", frozen=True, title="Input")

    image: Text = Field(
        title="Image",
        description=f"The portrait of both people: {_REFERENCE_FORMS} {EXAMPLE_IMAGE!r}.",
        examples=[EXAMPLE_IMAGE],
    )
    left_audio: Text = _speech_field("left")
    right_audio: Text = _speech_field("right")
    prompt: Text = Field(
        DEFAULT_TWO_SPEAKER_PROMPT,
        max_length=MAX_PROMPT_CHARS,
        title="Prompt",
        description=f"What the video shows; a non-empty sentence of at most {MAX_PROMPT_CHARS} characters.",
    )
    order: Literal["meanwhile", "left_right", "right_left"] = Field(
        "meanwhile",
        title="Speaking Order",
        description=(
            "meanwhile: both speak from the start; left_right: the left person speaks, then the right one; "
            "right_left: the other way round."
        ),
    )
    left_box: Box | None = _box_field("left")
    right_box: Box | None = _box_field("right")
    resolution: SizeOption = size_field()
    frames: FrameCount = frames_field()
    seed: int = seed_field()
    steps: int = steps_field()
    shift: float = shift_field()
    cfg: float = cfg_field()
    audio_cfg: float = audio_cfg_field()
    match_audio_length: bool = match_audio_length_field()

    @field_validator("left_box", "right_box")
    @classmethod
    def _box_has_area(cls, box: list[float] | None) -> list[float] | None:
        if box is not None and not (box[0] < box[2] and box[1] < box[3]):
            raise PydanticCustomError(
                "box_empty", "must be [left, top, right, bottom] with left < right and top < bottom"
            )
        return box

    @model_validator(mode="after")
    def _both_boxes_or_neither(self) -> TwoSpeakerRequest:
        if (self.left_box is None) != (self.right_box is None):
            raise PydanticCustomError("boxes_paired", "give both left_box and right_box, or neither")
        return self

    def references(self) -> dict[str, tuple[str, str]]:
        """The inputs to fetch: role → (request field, reference); the left person's speech is ``audio``."""
        return {
            "image": (fields.MULTI_IMAGE, self.image),
            "audio": (fields.LEFT_AUDIO, self.left_audio),
            "audio2": (fields.RIGHT_AUDIO, self.right_audio),
        }

    @property
    def follows_speech(self) -> bool:
        """Whether the video is as long as the speech (then the speech must last a frame at least)."""
        return self.match_audio_length

    def speech_seconds(self, durations: dict[str, float]) -> float:
        """Both at once: the longer one; in turn: both."""
        left, right = durations["audio"], durations["audio2"]
        return max(left, right) if self.order == "meanwhile" else left + right

    def to_settings(self, facts: InputFacts = NO_FACTS) -> JobSettings:
        """With boxes, the image's size (``facts.sizes["image"]``, upright) must be known: a box outside it
        is ``InputRejected`` naming the box."""
        width, height = SIZES[self.resolution]
        frames = resolve_frames(self.frames, self.match_audio_length, facts)
        boxes = None
        if self.left_box is not None and self.right_box is not None:
            boxes = (tuple(self.left_box), tuple(self.right_box))
            for field, box in zip((fields.LEFT_BOX, fields.RIGHT_BOX), boxes, strict=True):
                try:
                    SpeakerBox(*box).check(field, facts.sizes["image"])
                except InputError as error:
                    raise InputRejected(
                        field, error.message.removeprefix(f"{field} "), code="invalid_box"
                    ) from None
        return JobSettings(
            prompt=self.prompt,
            width=width,
            height=height,
            frames=frames,
            **self.sampling_knobs(),
            order=self.order,
            boxes=boxes,
        )

    def body_hash(self) -> str:
        """As the seed endpoint's (``SubmitRequest.body_hash``), told apart from it by the endpoint."""
        dumped = self.model_dump_json(exclude_defaults=True)
        return hashlib.sha256(f"two-speakers:{dumped}".encode()).hexdigest()
