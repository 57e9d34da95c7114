"""Colour correction: LAB conversions, the statistics match, computed slice by slice on the video's device."""

from __future__ import annotations

import pytest
import torch

from bench.tensor_memory import fake_tensors, peak_bytes
from pipeline.color import lab_statistics, lab_to_rgb, match_colors, rgb_to_lab


def test_lab_round_trip_and_known_values():
    rgb = torch.rand(50, 3, dtype=torch.float64)
    assert torch.allclose(lab_to_rgb(rgb_to_lab(rgb)), rgb, atol=1e-9)
    white = rgb_to_lab(torch.ones(3, dtype=torch.float64))
    assert torch.allclose(white, torch.tensor([100.0, 0.0, 0.0], dtype=torch.float64), atol=1e-3)


def test_match_pulls_statistics_to_reference_and_strength_zero_is_identity():
    torch.manual_seed(0)
    reference = torch.rand(3, 16, 16) * 2 - 1
    drifted = (reference.unsqueeze(1).repeat(1, 4, 1, 1) * 0.5 + 0.3).clamp(-1, 1)
    corrected = match_colors(drifted, reference, strength=1.0)
    ref_lab = rgb_to_lab(((reference.permute(1, 2, 0) + 1) / 2).double()).reshape(-1, 3)
    out_lab = rgb_to_lab(((corrected.permute(1, 2, 3, 0) + 1) / 2).double()).reshape(-1, 3)
    before = rgb_to_lab(((drifted.permute(1, 2, 3, 0) + 1) / 2).double()).reshape(-1, 3)
    assert (out_lab.mean(0) - ref_lab.mean(0)).abs().max() < (
        before.mean(0) - ref_lab.mean(0)
    ).abs().max() / 4
    assert torch.equal(match_colors(drifted, reference, strength=0.0), drifted)


def _whole_video_match(video: torch.Tensor, reference: torch.Tensor, strength: float) -> torch.Tensor:
    """The correction computed on the whole chunk at once, as the definition reads."""
    frames = ((video.permute(1, 2, 3, 0) + 1) / 2).clamp(0, 1)
    lab = rgb_to_lab(frames)
    ref_lab = rgb_to_lab(((reference.permute(1, 2, 0) + 1) / 2).clamp(0, 1)).reshape(-1, 3)
    flat = lab.reshape(-1, 3)
    matched = (lab - flat.mean(0)) / flat.std(0) * ref_lab.std(0) + ref_lab.mean(0)
    blended = (1 - strength) * frames.double() + strength * lab_to_rgb(matched)
    return (blended * 2 - 1).permute(3, 0, 1, 2).to(video.dtype)


def test_slice_by_slice_matching_equals_the_whole_chunk_computation():
    generator = torch.Generator().manual_seed(1)
    video = torch.rand(3, 11, 12, 10, generator=generator) * 1.6 - 0.9  # 11 frames: uneven slices
    reference = torch.rand(3, 9, 7, generator=generator) * 2 - 1
    for strength in (1.0, 0.4):
        expected = _whole_video_match(video, reference, strength)
        torch.testing.assert_close(match_colors(video, reference, strength), expected, atol=1e-6, rtol=0)
    mean, std = lab_statistics(video)
    lab = rgb_to_lab(((video.permute(1, 2, 3, 0) + 1) / 2).clamp(0, 1)).reshape(-1, 3)
    torch.testing.assert_close(mean, lab.mean(0), atol=1e-10, rtol=0)
    torch.testing.assert_close(std, lab.std(0), atol=1e-10, rtol=0)


def test_runs_on_the_videos_device_and_refuses_an_empty_video():
    # The meta device stands in for a GPU: every constant must follow the video, none may stay on the CPU.
    video = torch.empty(3, 6, 8, 8, device="meta")
    out = match_colors(video, torch.empty(3, 8, 8, device="meta"))
    assert out.device.type == "meta" and out.shape == video.shape
    with pytest.raises(ValueError, match="at least one frame"):
        lab_statistics(torch.zeros(3, 0, 4, 4))


def test_a_1280x720_chunk_needs_a_slice_of_temporaries_not_the_chunks():
    with fake_tensors():
        video = torch.empty(3, 81, 720, 1280)
        reference = torch.empty(3, 720, 1280)
        sliced = peak_bytes(lambda: match_colors(video, reference))
        whole = peak_bytes(lambda: _whole_video_match(video, reference, 1.0))
    chunk = video.numel() * 4  # the fp32 output: 0.83 GiB
    assert whole > 15 * 2**30  # float64 copies of the whole chunk, several at once
    assert sliced < chunk + 1.5 * 2**30
