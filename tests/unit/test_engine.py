"""The sampler's engine on the tiny preset: a job's settings reach the pipeline and its record."""

from __future__ import annotations

import dataclasses

import av
import pytest
from api_fixtures import SEED_SETTINGS

from loadtest.hostile_media import counting_level, counting_video
from pipeline.pipeline import encode_speech
from serve.engine import PipelineEngine


@pytest.mark.slow
def test_a_job_runs_with_its_guidance_scales_and_frame_count(tiny_components, assets, tmp_path):
    settings = dataclasses.replace(
        SEED_SETTINGS, width=64, height=64, frames=37, steps=1, cfg=1.5, audio_cfg=2.0
    )
    passes: list[int] = []
    hook = tiny_components.transformer.register_forward_pre_hook(
        lambda _m, _a, kwargs: passes.append(kwargs["hidden_states"].shape[0]), with_kwargs=True
    )
    engine = PipelineEngine(
        tiny_components, lambda speech, frames: encode_speech(tiny_components.audio_encoder, speech, frames)
    )
    reported: list[float] = []
    out = tmp_path / "video.mp4"
    try:
        result = engine.run(
            settings,
            {"image": (assets / "portrait.png").read_bytes(), "audio": (assets / "speech.wav").read_bytes()},
            out,
            lambda fraction, eta: reported.append(fraction),
        )
    finally:
        hook.remove()
    assert passes == [3]  # one step, text and audio guidance: three passes as one batch
    assert (result.reproducibility["cfg"], result.reproducibility["audio_cfg"]) == (1.5, 2.0)
    assert result.reproducibility["frames"] == 37 and reported[-1] == 1.0
    with av.open(str(out)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 37


@pytest.mark.slow
def test_a_two_speaker_job_encodes_each_track_and_records_the_order(tiny_components, assets, tmp_path):
    settings = dataclasses.replace(
        SEED_SETTINGS,
        width=64,
        height=64,
        frames=29,
        steps=1,
        order="left_right",
        boxes=((0, 0, 60, 90), (60, 0, 120, 90)),
    )
    encoded: list[int] = []

    def encode(speech, frames):
        encoded.append(speech.size)
        return encode_speech(tiny_components.audio_encoder, speech, frames)

    speech = (assets / "speech.wav").read_bytes()
    out = tmp_path / "video.mp4"
    result = PipelineEngine(tiny_components, encode).run(
        settings,
        {"image": (assets / "portrait.png").read_bytes(), "audio": speech, "audio2": speech},
        out,
        lambda fraction, eta: None,
    )
    assert len(encoded) == 2 and encoded[0] == encoded[1]  # both tracks, laid out in turn: equal lengths
    assert (result.reproducibility["speakers"], result.reproducibility["order"]) == (2, "left_right")
    with av.open(str(out)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 29


@pytest.mark.slow
def test_a_dubbing_job_follows_its_source_video(tiny_components, assets, tmp_path):
    settings = dataclasses.replace(SEED_SETTINGS, width=96, height=64, frames=90, steps=1)
    seen: list[float] = []
    hook = tiny_components.image_encoder.register_forward_pre_hook(
        lambda _m, args: seen.append(float(args[0].mean()))
    )
    engine = PipelineEngine(
        tiny_components, lambda speech, frames: encode_speech(tiny_components.audio_encoder, speech, frames)
    )
    out = tmp_path / "dubbed.mp4"
    try:
        result = engine.run(
            settings,
            {"video": counting_video(seconds=4.0, fps=25), "audio": (assets / "speech.wav").read_bytes()},
            out,
            lambda fraction, eta: None,
        )
    finally:
        hook.remove()
    # Two chunks, conditioned on source frames 0 and 72 (grey levels 0 and 64 of 255: -1 and -0.5 in pixels).
    assert seen == pytest.approx([-1.0, counting_level(72) / 127.5 - 1], abs=0.03)
    assert result.reproducibility["mode"] == "video-to-video"
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        assert (stream.width, stream.height) == (96, 64)
        assert sum(1 for _ in container.decode(video=0)) == 90
