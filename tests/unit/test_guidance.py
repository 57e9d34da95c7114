"""Text and audio guidance: the passes a step runs, and their combination against the reference's rules."""

from __future__ import annotations

import pytest
import torch

from pipeline.errors import InputError
from pipeline.guidance import Condition, Guidance

SHAPE = (1, 16, 3, 4, 6)


def _velocities(seed: int = 0) -> dict[Condition, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {condition: torch.randn(SHAPE, generator=generator) for condition in Condition}


def _reference(v: dict[Condition, torch.Tensor], text: float, audio: float) -> torch.Tensor:
    """The official sampler's rule: with text guidance at 1, cond vs dropped audio; otherwise always three
    passes (cond, dropped text, dropped both), whatever the audio scale."""
    if text == 1.0:
        drop_audio = v[Condition.NO_AUDIO]
        return drop_audio + audio * (v[Condition.FULL] - drop_audio)
    cond, drop_text, uncond = v[Condition.FULL], v[Condition.NO_TEXT], v[Condition.NEITHER]
    return uncond + text * (cond - drop_text) + audio * (drop_text - uncond)


@pytest.mark.parametrize(
    ("text", "audio", "passes"),
    [
        (1.0, 1.0, (Condition.FULL,)),
        (1.5, 1.0, (Condition.FULL, Condition.NO_TEXT)),
        (1.0, 2.0, (Condition.FULL, Condition.NO_AUDIO)),
        (5.0, 4.0, (Condition.FULL, Condition.NO_TEXT, Condition.NEITHER)),
        (0.6, 0.5, (Condition.FULL, Condition.NO_TEXT, Condition.NEITHER)),
    ],
)
def test_each_case_runs_only_the_passes_it_needs_and_matches_the_reference(text, audio, passes):
    guidance = Guidance(text=text, audio=audio)
    assert guidance.passes == passes
    v = _velocities()
    combined = guidance.combine(torch.cat([v[condition] for condition in passes]))
    assert combined.shape == SHAPE
    expected = _reference(v, text, audio)
    assert torch.linalg.vector_norm(combined - expected) <= 1e-5 * torch.linalg.vector_norm(expected)


def test_the_seed_default_is_one_fully_conditioned_pass():
    guidance = Guidance()
    v = _velocities()[Condition.FULL]
    assert guidance.passes == (Condition.FULL,) and not guidance.needs_negative_prompt
    assert torch.equal(guidance.combine(v), v)


def test_which_passes_see_the_negative_prompt_and_silence():
    assert [(c.negative_prompt, c.silent) for c in Guidance(text=2.0, audio=3.0).passes] == [
        (False, False),
        (True, False),
        (True, True),
    ]
    audio_only = Guidance(audio=3.0).passes
    assert [(c.negative_prompt, c.silent) for c in audio_only] == [(False, False), (False, True)]
    assert not Guidance(audio=3.0).needs_negative_prompt and Guidance(text=2.0).needs_negative_prompt


@pytest.mark.parametrize("scales", [{"text": 0.0}, {"audio": -1.0}, {"audio": float("nan")}])
def test_scales_must_be_positive(scales):
    with pytest.raises(InputError, match="must be positive"):
        Guidance(**scales)


def test_a_batch_that_does_not_match_the_passes_is_refused():
    with pytest.raises(ValueError, match="expected 3 velocities"):
        Guidance(text=2.0, audio=2.0).combine(torch.zeros(2, *SHAPE[1:]))
