"""Colour correction toward the portrait: match each chunk's LAB mean/std to the reference (stops drift).

Long videos are generated chunk by chunk from the previous chunk's last frames, so small colour shifts
compound; pulling every chunk's per-channel LAB statistics back to the portrait's keeps them in check.

The conversion runs in float64 on the video's own device, a few frames at a time: a whole 1280×720 chunk
in float64 is 1.8 GiB per temporary, and the conversion makes several (``bench.activation_memory``).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import torch

_RGB_TO_XYZ = (
    (0.412453, 0.357580, 0.180423),
    (0.212671, 0.715160, 0.072169),
    (0.019334, 0.119193, 0.950227),
)
_WHITE_D65 = (0.950456, 1.0, 1.088754)
_EPSILON = 0.008856
_KAPPA = 903.3
FRAMES_PER_SLICE = 4


def _srgb_to_linear(c: torch.Tensor) -> torch.Tensor:
    return torch.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)


def _linear_to_srgb(c: torch.Tensor) -> torch.Tensor:
    c = c.clamp(min=0)
    return torch.where(c > 0.0031308, 1.055 * c ** (1 / 2.4) - 0.055, 12.92 * c)


class LabConversion:
    """sRGB ↔ CIE LAB (D65) in float64 on one device; its constants are copied there once, not per call."""

    def __init__(self, device: torch.device) -> None:
        to_xyz = torch.tensor(_RGB_TO_XYZ, dtype=torch.float64)
        self.to_xyz = to_xyz.T.to(device)
        self.from_xyz = torch.linalg.inv(to_xyz).T.to(device)  # inverted on the host: no device sync
        self.white = torch.tensor(_WHITE_D65, dtype=torch.float64).to(device)

    def to_lab(self, rgb: torch.Tensor) -> torch.Tensor:
        """``[..., 3]`` sRGB in [0, 1] → LAB."""
        xyz = _srgb_to_linear(rgb.double()) @ self.to_xyz / self.white
        f = torch.where(xyz > _EPSILON, xyz ** (1 / 3), (_KAPPA * xyz + 16) / 116)
        lightness = 116 * f[..., 1] - 16
        a = 500 * (f[..., 0] - f[..., 1])
        b = 200 * (f[..., 1] - f[..., 2])
        return torch.stack([lightness, a, b], dim=-1)

    def to_rgb(self, lab: torch.Tensor) -> torch.Tensor:
        """``[..., 3]`` LAB → sRGB in [0, 1]."""
        fy = (lab[..., 0] + 16) / 116
        fx = fy + lab[..., 1] / 500
        fz = fy - lab[..., 2] / 200
        f = torch.stack([fx, fy, fz], dim=-1)
        xyz = torch.where(f**3 > _EPSILON, f**3, (116 * f - 16) / _KAPPA) * self.white
        return _linear_to_srgb(xyz @ self.from_xyz).clamp(0, 1)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """``[..., 3]`` sRGB in [0, 1] → CIE LAB (D65), float64."""
    return LabConversion(rgb.device).to_lab(rgb)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    return LabConversion(lab.device).to_rgb(lab)


def _unit_frames(video: torch.Tensor) -> torch.Tensor:
    """``[3, F, H, W]`` in [−1, 1] → ``[F, H, W, 3]`` in [0, 1]."""
    return ((video.permute(1, 2, 3, 0) + 1) / 2).clamp(0, 1)


def _slices(frames: int) -> Iterator[slice]:
    for start in range(0, frames, FRAMES_PER_SLICE):
        yield slice(start, start + FRAMES_PER_SLICE)


Moments = tuple[int, torch.Tensor, torch.Tensor]


def _moments(video: torch.Tensor, lab_conversion: LabConversion) -> Moments:
    """Pixel count, per-channel LAB mean and sum of squared deviations of ``[3, F, H, W]``."""
    lab = lab_conversion.to_lab(_unit_frames(video)).reshape(-1, 3)
    mean = lab.mean(0)
    return lab.shape[0], mean, ((lab - mean) ** 2).sum(0)


def _combine(first: Moments, second: Moments) -> Moments:
    """The moments of two sets of pixels from each one's (Chan, Golub and LeVeque's pairwise update)."""
    (count_a, mean_a, squares_a), (count_b, mean_b, squares_b) = first, second
    count = count_a + count_b
    delta = mean_b - mean_a
    squares = squares_a + squares_b + delta**2 * count_a * count_b / count
    return count, mean_a + delta * count_b / count, squares


def lab_statistics(
    video: torch.Tensor, lab_conversion: LabConversion | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel LAB mean and (unbiased) standard deviation over every pixel of ``[3, F, H, W]``, computed
    a slice of frames at a time."""
    if video.shape[1] == 0:
        raise ValueError("a video needs at least one frame")
    lab_conversion = lab_conversion or LabConversion(video.device)
    parts = (_moments(video[:, part], lab_conversion) for part in _slices(video.shape[1]))
    count, mean, squares = functools.reduce(_combine, parts)
    return mean, (squares / max(count - 1, 1)).sqrt()


def match_colors(video: torch.Tensor, reference: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
    """Blend ``video`` ``[3, F, H, W]`` in [−1, 1] toward ``reference`` ``[3, H', W']``'s LAB statistics."""
    if strength <= 0:
        return video
    lab = LabConversion(video.device)
    reference_lab = lab.to_lab(_unit_frames(reference.unsqueeze(1))).reshape(-1, 3)
    target_mean, target_std = reference_lab.mean(0), reference_lab.std(0)
    mean, std = lab_statistics(video, lab)
    std = std.clamp(min=1e-6)
    out = torch.empty_like(video)
    for part in _slices(video.shape[1]):
        frames = _unit_frames(video[:, part])
        corrected = lab.to_rgb((lab.to_lab(frames) - mean) / std * target_std + target_mean)
        blended = (1 - strength) * frames.double() + strength * corrected
        out[:, part] = (blended * 2 - 1).permute(3, 0, 1, 2).to(video.dtype)
    return out
