"""Two people in one portrait: tracks laid out by speaking order, masks from boxes, whole tiny generations."""

from __future__ import annotations

import dataclasses

import av
import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.audio import decode_audio
from pipeline.conditioning import load_image
from pipeline.errors import InputError
from pipeline.pipeline import GenerationRequest, InfiniteTalkPipeline
from pipeline.presets import SINGLE, TINY
from pipeline.two_speakers import Box, SpeakingOrder, arrange_speech, default_boxes, mix_speech, speaker_masks

RATE = 16_000


def _tone(seconds: float, value: float) -> np.ndarray:
    return np.full(int(RATE * seconds), value, dtype=np.float32)


@pytest.mark.parametrize(
    ("order", "left_active", "right_active"),
    [
        (SpeakingOrder.MEANWHILE, (0, 1.0), (0, 0.5)),
        (SpeakingOrder.LEFT_RIGHT, (0, 1.0), (1.0, 1.5)),
        (SpeakingOrder.RIGHT_LEFT, (0.5, 1.5), (0, 0.5)),
    ],
)
def test_speaking_order_lays_the_tracks_out_in_time(order, left_active, right_active):
    left, right = arrange_speech(_tone(1.0, 0.1), _tone(0.5, 0.2), order)
    assert len(left) == len(right) == (RATE if order is SpeakingOrder.MEANWHILE else int(1.5 * RATE))
    for track, (start, end), value in ((left, left_active, 0.1), (right, right_active, 0.2)):
        active = np.flatnonzero(track)
        assert (active[0], active[-1] + 1) == (int(start * RATE), int(end * RATE))
        assert np.all(track[active] == np.float32(value))


def test_the_mix_is_both_tracks_summed_and_kept_in_range():
    left, right = arrange_speech(_tone(1.0, 0.9), _tone(1.0, 0.9), SpeakingOrder.MEANWHILE)
    mixed = mix_speech((left, right), RATE)
    assert mixed.shape == left.shape and mixed.dtype == np.float32
    assert np.abs(mixed).max() <= 1.0


def test_default_masks_are_the_inset_halves():
    masks = speaker_masks((200, 100), None, (64, 32), (4, 8))
    assert masks.shape == (3, 4, 8)
    assert masks[0].sum() > 0 and masks[1].sum() > 0
    assert not masks[0][:, 4:].any() and not masks[1][:, :4].any()  # left is speaker 1, right speaker 2
    assert torch.equal(masks[2], 1 - (masks[0] + masks[1]).clamp(max=1))
    assert default_boxes((200, 100))[0] == Box(5.0, 5.0, 95.0, 95.0)


def test_boxes_follow_the_portraits_crop():
    # A 400x100 portrait fitted to a square: only its middle 100x100 survives the crop.
    boxes = (Box(150, 0, 200, 100), Box(200, 0, 250, 100))
    masks = speaker_masks((400, 100), boxes, (64, 64), (8, 8))
    assert masks[0].sum(0).tolist() == [8, 8, 8, 8, 0, 0, 0, 0]
    assert masks[1].sum(0).tolist() == [0, 0, 0, 0, 8, 8, 8, 8]
    assert not masks[2].any()
    outside = (Box(0, 0, 100, 100), Box(300, 0, 400, 100))  # both cropped away: all background
    assert speaker_masks((400, 100), outside, (64, 64), (8, 8))[2].all()


@pytest.mark.parametrize("box", [Box(10, 10, 5, 20), Box(0, 0, 300, 20), Box(-1, 0, 10, 10)])
def test_a_box_outside_the_portrait_is_refused_by_name(box):
    with pytest.raises(InputError, match="right speaker box"):
        speaker_masks((200, 100), (Box(0, 0, 10, 10), box), (64, 32), (4, 8))


@pytest.fixture(scope="module")
def speech(assets):
    return decode_audio(assets / "speech.wav")


@pytest.fixture(scope="module")
def portrait(assets):
    return load_image(assets / "portrait.png")


def _request(portrait, speech, **overrides) -> GenerationRequest:
    settings = {"prompt": "two people talk", "steps": 1, "seed": 7, "width": 128, "height": 64, **overrides}
    return GenerationRequest(image=portrait, speech=speech, **settings)


@pytest.mark.slow
@pytest.mark.parametrize("order", list(SpeakingOrder))
def test_a_two_speaker_video_has_its_frames_size_and_mixed_sound(
    tiny_pipeline, portrait, speech, order, tmp_path
):
    first, second = speech[: int(1.2 * RATE)], speech[int(1.2 * RATE) : int(2.0 * RATE)]
    request = _request(portrait, first, speech2=second, order=order, frames=45)
    out = tmp_path / "two.mp4"
    tiny_pipeline.generate_to_file(request, out)
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        assert (stream.width, stream.height, stream.average_rate) == (128, 64, 25)
        assert sum(1 for _ in container.decode(video=0)) == 45
    with av.open(str(out)) as container:
        sound = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])
    expected = mix_speech(arrange_speech(first, second, order), RATE)[: int(45 / 25 * RATE)]
    # AAC is lossy: compare the loudness envelope over 0.2 s blocks, not samples.
    block = RATE // 5
    blocks = len(expected) // block
    got = np.sqrt((sound[: blocks * block].reshape(blocks, block) ** 2).mean(1))
    want = np.sqrt((expected[: blocks * block].reshape(blocks, block) ** 2).mean(1))
    assert np.corrcoef(got, want)[0, 1] > 0.9


@pytest.mark.slow
def test_silent_guidance_passes_take_the_single_speaker_path(
    tiny_pipeline, tiny_components, portrait, speech
):
    calls: list[tuple[int, int, bool]] = []
    hook = tiny_components.transformer.register_forward_pre_hook(
        lambda _m, _a, kwargs: calls.append(
            (
                kwargs["hidden_states"].shape[0],
                kwargs["audio_embeds"].ndim,
                kwargs["speaker_masks"] is not None,
            )
        ),
        with_kwargs=True,
    )
    try:
        request = _request(
            portrait, speech[:RATE], speech2=speech[RATE : 2 * RATE], frames=33, cfg=1.5, audio_cfg=2.0
        )
        tiny_pipeline.generate(request)
    finally:
        hook.remove()
    # Prompt and negative prompt hear both speakers (one call, masks); the silent pass is one track of zeros.
    assert calls == [(2, 6, True), (1, 5, False)]


def test_boxes_need_two_speakers(tiny_pipeline, portrait, speech):
    request = _request(portrait, speech, boxes=(Box(0, 0, 10, 10), Box(10, 0, 20, 10)))
    with pytest.raises(InputError, match="two speakers"):
        tiny_pipeline.check_inputs(request)
    blank = Image.new("RGB", (20, 20))
    bad = _request(blank, speech, speech2=speech, boxes=(Box(0, 0, 10, 10), Box(10, 0, 30, 10)))
    with pytest.raises(InputError, match="right speaker box"):
        tiny_pipeline.check_inputs(bad)


def test_the_single_speaker_checkpoint_refuses_a_second_speaker(tiny_components, portrait, speech):
    single = dataclasses.replace(tiny_components, preset=dataclasses.replace(TINY, variant=SINGLE))
    request = _request(portrait, speech, speech2=speech)
    with pytest.raises(InputError, match="two speakers need the multi checkpoint"):
        InfiniteTalkPipeline(single).check_inputs(request)
    InfiniteTalkPipeline(single).check_inputs(_request(portrait, speech))
