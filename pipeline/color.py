"""Colour correction toward the portrait: match each chunk's LAB mean/std to the reference (stops drift).

Long videos are generated chunk by chunk from the previous chunk's last frames, so small colour shifts
compound; pulling every chunk's per-channel LAB statistics back to the portrait's keeps them in check.
"""

from __future__ import annotations

import torch

_RGB_TO_XYZ = torch.tensor(
    [[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]],
    dtype=torch.float64,
)
_WHITE_D65 = torch.tensor([0.950456, 1.0, 1.088754], dtype=torch.float64)
_EPSILON = 0.008856
_KAPPA = 903.3


def _srgb_to_linear(c: torch.Tensor) -> torch.Tensor:
    return torch.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)


def _linear_to_srgb(c: torch.Tensor) -> torch.Tensor:
    c = c.clamp(min=0)
    return torch.where(c > 0.0031308, 1.055 * c ** (1 / 2.4) - 0.055, 12.92 * c)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """``[..., 3]`` sRGB in [0, 1] → CIE LAB (D65)."""
    xyz = _srgb_to_linear(rgb.double()) @ _RGB_TO_XYZ.T / _WHITE_D65
    f = torch.where(xyz > _EPSILON, xyz ** (1 / 3), (_KAPPA * xyz + 16) / 116)
    lightness = 116 * f[..., 1] - 16
    a = 500 * (f[..., 0] - f[..., 1])
    b = 200 * (f[..., 1] - f[..., 2])
    return torch.stack([lightness, a, b], dim=-1)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    fy = (lab[..., 0] + 16) / 116
    fx = fy + lab[..., 1] / 500
    fz = fy - lab[..., 2] / 200
    f = torch.stack([fx, fy, fz], dim=-1)
    xyz = torch.where(f**3 > _EPSILON, f**3, (116 * f - 16) / _KAPPA) * _WHITE_D65
    return _linear_to_srgb(xyz @ torch.linalg.inv(_RGB_TO_XYZ).T).clamp(0, 1)


def match_colors(video: torch.Tensor, reference: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
    """Blend ``video`` ``[3, F, H, W]`` in [−1, 1] toward ``reference`` ``[3, H', W']``'s LAB statistics."""
    if strength <= 0:
        return video
    frames = ((video.permute(1, 2, 3, 0) + 1) / 2).clamp(0, 1)
    lab = rgb_to_lab(frames)
    ref_lab = rgb_to_lab(((reference.permute(1, 2, 0) + 1) / 2).clamp(0, 1)).reshape(-1, 3)
    flat = lab.reshape(-1, 3)
    mean, std = flat.mean(0), flat.std(0).clamp(min=1e-6)
    matched = (lab - mean) / std * ref_lab.std(0) + ref_lab.mean(0)
    corrected = lab_to_rgb(matched)
    blended = (1 - strength) * frames.double() + strength * corrected
    return (blended * 2 - 1).permute(3, 0, 1, 2).to(video.dtype)
