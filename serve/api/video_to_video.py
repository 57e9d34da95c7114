"""The body of ``POST /v1/models/community/infinite-talk/video-to-video``: dub a video with new speech.

fal's ``infinitalk/video-to-video`` takes a video, a speech track and a prompt; here the inputs take the
forms the other endpoints' do, and the knobs have the plain names of the two-speaker endpoint. There is no
``resolution``: the source decides the size (kept up to 1280x720 pixels of area, scaled down to fit beyond).
Without ``frames`` the video is as long as the speech.
"""

from __future__ import annotations

import hashlib

from pydantic import ConfigDict, Field

from pipeline.source_video import dubbing_size
from serve import fields
from serve.api.knobs import (
    FrameCount,
    InputFacts,
    SubmitFields,
    Text,
    audio_cfg_field,
    cfg_field,
    match_audio_length_field,
    resolve_frames,
    seed_field,
    shift_field,
    steps_field,
)
from serve.api.schemas import MAX_PROMPT_CHARS
from serve.fields import EXAMPLE_AUDIO
from serve.jobs.records import JobSettings

DEFAULT_DUBBING_PROMPT = "a person is talking"

_REFERENCE_FORMS = "an https:// URL, a data: URI, or the id of a file uploaded with POST /v1/files (file_...)"


class VideoToVideoRequest(SubmitFields):
    model_config = ConfigDict(extra="forbid", frozen=True, title="Input")

    video: Text = Field(
        title="Video",
        description=(
            f"The video to dub: {_REFERENCE_FORMS}. The bytes must decode as a video (a still image is "
            "refused). Its size is kept up to 1280x720 pixels of area; a larger video is scaled down to "
            "fit, keeping its aspect ratio. Each 72-frame stretch of the output follows the source's "
            "frame at its start; past the source's end, its last frame."
        ),
    )
    audio: Text = Field(
        title="Audio",
        description=(
            f"The new speech: {_REFERENCE_FORMS}, or the example name {EXAMPLE_AUDIO!r}. It becomes the "
            "video's sound track."
        ),
        examples=[EXAMPLE_AUDIO],
    )
    prompt: Text = Field(
        DEFAULT_DUBBING_PROMPT,
        max_length=MAX_PROMPT_CHARS,
        title="Prompt",
        description=f"What the video shows; a non-empty sentence of at most {MAX_PROMPT_CHARS} characters.",
    )
    frames: FrameCount | None = Field(
        None,
        title="Number of Frames",
        description=(
            "Length of the video in frames at 25 fps (125 = 5 s, 250 = 10 s); default: as long as the "
            "speech, up to the server's cap (1000 frames = 40 s by default)."
        ),
    )
    seed: int = seed_field()
    steps: int = steps_field()
    shift: float = shift_field()
    cfg: float = cfg_field()
    audio_cfg: float = audio_cfg_field()
    match_audio_length: bool = match_audio_length_field()

    @property
    def follows_speech(self) -> bool:
        return self.frames is None or self.match_audio_length

    def references(self) -> dict[str, tuple[str, str]]:
        """The inputs to fetch: role → (request field, reference)."""
        return {"video": (fields.VIDEO, self.video), "audio": (fields.DUB_AUDIO, self.audio)}

    def speech_seconds(self, durations: dict[str, float]) -> float:
        return durations["audio"]

    def to_settings(self, facts: InputFacts) -> JobSettings:
        """The source's size (``facts.sizes["video"]``, required) decides the output's."""
        width, height = dubbing_size(*facts.sizes["video"])
        return JobSettings(
            prompt=self.prompt,
            width=width,
            height=height,
            frames=resolve_frames(self.frames, self.follows_speech, facts),
            **self.sampling_knobs(),
        )

    def body_hash(self) -> str:
        """As the seed endpoint's (``SubmitRequest.body_hash``), told apart from it by the endpoint."""
        dumped = self.model_dump_json(exclude_defaults=True)
        return hashlib.sha256(f"video-to-video:{dumped}".encode()).hexdigest()
