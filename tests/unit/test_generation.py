"""Whole tiny-preset generations: the real code path at small widths, checked on the decoded MP4."""

from __future__ import annotations

import dataclasses

import av
import numpy as np
import pytest
import torch

from pipeline.audio import decode_audio
from pipeline.color import match_colors
from pipeline.conditioning import load_image, portrait_tensor
from pipeline.errors import InputError, SizeError
from pipeline.pipeline import GenerationRequest, InfiniteTalkPipeline, working_size
from pipeline.streaming import MOTION_FRAMES

AAC_FRAME_SECONDS = 1024 / 16000


@pytest.fixture(scope="module")
def speech(assets):
    return decode_audio(assets / "speech.wav")


@pytest.fixture(scope="module")
def portrait(assets):
    return load_image(assets / "portrait.png")


def _request(portrait, speech, **overrides) -> GenerationRequest:
    settings = {"prompt": "a woman is talking", "steps": 2, "seed": 1234, **overrides}
    return GenerationRequest(image=portrait, speech=speech, **settings)


def _probe(path):
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        frames = sum(1 for _ in container.decode(video=0))
        rate = video.average_rate
        size = (video.width, video.height)
    with av.open(str(path)) as container:
        audio = container.streams.audio[0]
        codec = audio.codec_context.name
        samples = sum(f.samples for f in container.decode(audio=0))
        seconds = samples / audio.codec_context.sample_rate
    return frames, size, rate, codec, seconds


@pytest.fixture(scope="module")
def clip_960x540(tiny_pipeline, portrait, speech, tmp_path_factory):
    """One 125-frame generation shared by the tests that inspect its file, latents and progress."""
    path = tmp_path_factory.mktemp("clip") / "out.mp4"
    progress = []
    request = _request(portrait, speech, width=960, height=540, frames=125)
    output = tiny_pipeline.generate_to_file(request, path, progress=progress.append)
    return request, output, path, progress


def _assert_mp4(path, width, height, frames):
    decoded_frames, size, rate, codec, audio_seconds = _probe(path)
    assert decoded_frames == frames
    assert size == (width, height)
    assert rate == 25
    assert codec == "aac"
    assert abs(audio_seconds - frames / 25) <= AAC_FRAME_SECONDS


@pytest.mark.slow
def test_125_frames_at_960x540(clip_960x540):
    _, _, path, _ = clip_960x540
    _assert_mp4(path, 960, 540, 125)


@pytest.mark.slow
def test_250_frames_at_a_portrait_size(tiny_pipeline, portrait, speech, tmp_path):
    out = tmp_path / "out.mp4"
    output = tiny_pipeline.generate_to_file(
        _request(portrait, speech, width=480, height=720, frames=250), out
    )
    assert len(output.chunk_latents) == 4
    _assert_mp4(out, 480, 720, 250)


@pytest.mark.slow
def test_same_seed_same_latents_different_seed_differs(tiny_pipeline, portrait, speech):
    request = _request(portrait, speech, width=480, height=480, frames=81)
    first = tiny_pipeline.generate(request).chunk_latents
    again = tiny_pipeline.generate(request).chunk_latents
    other = tiny_pipeline.generate(
        _request(portrait, speech, width=480, height=480, frames=81, seed=99)
    ).chunk_latents
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], other[0])


@pytest.mark.slow
def test_motion_latents_are_clean_reencoded_last_nine_frames(tiny_components, portrait, clip_960x540):
    request, output, _, _ = clip_960x540
    assert len(output.chunk_latents) == 2
    vae = tiny_components.vae
    width, height = output.working_size
    reference = portrait_tensor(portrait, width, height)[0]
    with torch.inference_mode():
        decoded = vae.decode(output.chunk_latents[0])[0].float()
        decoded = match_colors(decoded, reference, request.color_correction)
        motion = vae.encode(decoded[:, -MOTION_FRAMES:].unsqueeze(0))
    assert torch.allclose(output.chunk_latents[1][:, :, :3], motion, atol=1e-5)


@pytest.mark.slow
def test_guidance_batches_cond_and_negative_only_when_cfg_is_not_one(
    tiny_pipeline, tiny_components, portrait, speech
):
    batches: list[int] = []
    hook = tiny_components.transformer.register_forward_pre_hook(
        lambda _m, _a, kwargs: batches.append(kwargs["hidden_states"].shape[0]), with_kwargs=True
    )
    try:
        tiny_pipeline.generate(_request(portrait, speech, width=256, height=256, frames=81, cfg=1.0))
        single = list(batches)
        batches.clear()
        tiny_pipeline.generate(_request(portrait, speech, width=256, height=256, frames=81, cfg=1.5))
    finally:
        hook.remove()
    assert single == [1, 1]
    assert batches == [2, 2]


@pytest.mark.slow
def test_audio_guidance_passes_see_silence_and_the_negative_prompt_as_the_reference_does(
    tiny_pipeline, tiny_components, portrait, speech
):
    seen: list[dict[str, torch.Tensor]] = []
    hook = tiny_components.transformer.register_forward_pre_hook(
        lambda _m, _a, kwargs: seen.append({k: v.clone() for k, v in kwargs.items() if v is not None}),
        with_kwargs=True,
    )
    encoder = tiny_components.text_encoder
    try:
        tiny_pipeline.generate(
            _request(portrait, speech, width=256, height=256, frames=81, steps=1, cfg=1.0, audio_cfg=2.0)
        )
        audio_only = seen.pop()
        tiny_pipeline.generate(
            _request(portrait, speech, width=256, height=256, frames=81, steps=1, cfg=1.5, audio_cfg=2.0)
        )
        both = seen.pop()
    finally:
        hook.remove()
    prompt, negative = encoder.encode(["a woman is talking", tiny_pipeline_negative_prompt()])

    # Audio only: (prompt, speech) and (prompt, silence).
    assert audio_only["hidden_states"].shape[0] == 2
    assert torch.equal(audio_only["encoder_hidden_states"][0], prompt)
    assert torch.equal(audio_only["encoder_hidden_states"][1], prompt)
    assert audio_only["audio_embeds"][0].abs().sum() > 0 and not audio_only["audio_embeds"][1].any()
    # Both: (prompt, speech), (negative, speech), (negative, silence); latents the same in every pass.
    assert both["hidden_states"].shape[0] == 3
    texts = both["encoder_hidden_states"]
    assert torch.equal(texts[0], prompt)
    assert torch.equal(texts[1], negative) and torch.equal(texts[2], negative)
    audio = both["audio_embeds"]
    assert torch.equal(audio[0], audio[1]) and not audio[2].any()
    assert torch.equal(both["hidden_states"][0], both["hidden_states"][2])


def tiny_pipeline_negative_prompt() -> str:
    return GenerationRequest.__dataclass_fields__["negative_prompt"].default


@pytest.mark.slow
def test_guidance_one_pass_at_a_time_gives_the_batched_result(tiny_components, portrait, speech):
    request = _request(portrait, speech, width=256, height=256, frames=81, cfg=1.5)
    batched = InfiniteTalkPipeline(tiny_components).generate(request)
    sequential = dataclasses.replace(tiny_components, batch_guidance=False)
    batches: list[int] = []
    hook = sequential.transformer.register_forward_pre_hook(
        lambda _m, _a, kwargs: batches.append(kwargs["hidden_states"].shape[0]), with_kwargs=True
    )
    try:
        one_at_a_time = InfiniteTalkPipeline(sequential).generate(request)
    finally:
        hook.remove()
    assert batches == [1, 1, 1, 1]  # 2 steps × (prompt, negative prompt)
    torch.testing.assert_close(one_at_a_time.chunk_latents[0], batched.chunk_latents[0], atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_progress_counts_steps_decodes_and_the_write(clip_960x540):
    *_, seen = clip_960x540
    # 2 chunks x 2 steps, a decode after each chunk, then the mux: 7 units, reported one by one.
    assert [p.units_done for p in seen] == list(range(1, 8))
    assert [(p.chunk, p.step) for p in seen][:3] == [(0, 1), (0, 2), (0, 2)]
    assert all(p.fraction < 1.0 for p in seen[:-1])
    assert seen[-1].fraction == 1.0 and seen[-1].eta_seconds == 0.0


def test_working_size_is_multiple_of_16_and_capped():
    assert working_size(960, 540, None) == (960, 544)
    assert working_size(720, 720, None) == (720, 720)
    w, h = working_size(1280, 720, 160 * 96)
    assert w % 16 == 0 and h % 16 == 0 and w * h <= 160 * 96 * 1.2


@pytest.mark.parametrize(
    ("overrides", "error", "match"),
    [
        ({"prompt": "   "}, InputError, "prompt"),
        ({"width": 481}, SizeError, "width"),
        ({"height": 8}, SizeError, "height"),
        ({"frames": 0}, InputError, "frames"),
        ({"steps": 0}, InputError, "steps"),
        ({"cfg": 0.0}, InputError, "cfg"),
    ],
)
def test_bad_requests_are_named(tiny_pipeline, portrait, speech, overrides, error, match):
    with pytest.raises(error, match=match):
        tiny_pipeline.generate(_request(portrait, speech, **overrides))


def test_empty_speech_rejected(tiny_pipeline, portrait):
    with pytest.raises(InputError, match="speech"):
        tiny_pipeline.generate(_request(portrait, np.zeros(0, dtype=np.float32)))
