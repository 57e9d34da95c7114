import torch

from pipeline.color import lab_to_rgb, match_colors, rgb_to_lab


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
