"""The Wan2.1 video VAE: normalised latents in and out, and the 20-channel ``y`` (MODEL.md §4).

diffusers' ``AutoencoderKLWan`` works on un-normalised latents; the DiT was trained on
``(z − latents_mean) / latents_std``, so every latent that crosses this boundary is (de)normalised here and
nowhere else. The normalisation runs in fp32 whatever the VAE's dtype.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKLWan
from torch import nn

TEMPORAL_STRIDE = 4
SPATIAL_STRIDE = 8
MASK_CHANNELS = TEMPORAL_STRIDE


def latent_frame_count(num_frames: int) -> int:
    """1 + (F − 1) / 4: the first frame gets a latent frame of its own, then one per 4 frames."""
    if num_frames < 1 or (num_frames - 1) % TEMPORAL_STRIDE:
        raise ValueError(f"frame count must be 1 + 4k, got {num_frames}")
    return 1 + (num_frames - 1) // TEMPORAL_STRIDE


def first_frame_mask(
    num_frames: int, height: int, width: int, *, device: torch.device | str | None = None
) -> torch.Tensor:
    """``[1, 4, T, height, width]``: 1 where a latent frame holds the given portrait, 0 where it is generated.

    Built like Wan's: one mask value per video frame (only frame 0 known), frame 0 repeated 4 times so every
    latent frame spans 4 entries, then those 4 entries become 4 channels. Latent frame 0 is all ones.
    """
    latent_frames = latent_frame_count(num_frames)
    per_frame = torch.zeros(num_frames + TEMPORAL_STRIDE - 1, height, width, device=device)
    per_frame[:TEMPORAL_STRIDE] = 1.0
    return per_frame.view(latent_frames, MASK_CHANNELS, height, width).transpose(0, 1).unsqueeze(0)


class WanVAE(nn.Module):
    """``AutoencoderKLWan`` speaking normalised latents; pixels are ``[B, 3, F, H, W]`` in [−1, 1]."""

    def __init__(self, model: AutoencoderKLWan) -> None:
        super().__init__()
        self.model = model

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def latent_channels(self) -> int:
        return self.model.config.z_dim

    def enable_tiling(self, **kwargs: int) -> None:
        """Spatial tiling (diffusers' options) trades a little speed for far less activation memory."""
        self.model.enable_tiling(**kwargs)

    def disable_tiling(self) -> None:
        self.model.disable_tiling()

    def _statistics(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, self.latent_channels, 1, 1, 1)
        mean = torch.tensor(self.model.config.latents_mean, dtype=torch.float32, device=device).view(shape)
        std = torch.tensor(self.model.config.latents_std, dtype=torch.float32, device=device).view(shape)
        return mean, std

    def normalize(self, raw: torch.Tensor) -> torch.Tensor:
        mean, std = self._statistics(raw.device)
        return (raw.float() - mean) / std

    def denormalize(self, latents: torch.Tensor) -> torch.Tensor:
        mean, std = self._statistics(latents.device)
        return latents.float() * std + mean

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """Normalised fp32 latents ``[B, 16, 1 + (F − 1)/4, H/8, W/8]``: the posterior mean, not a sample."""
        _check_video(video)
        posterior = self.model.encode(video.to(self.device, self.dtype)).latent_dist
        return self.normalize(posterior.mode())

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """fp32 pixels in [−1, 1], ``[B, 3, 1 + 4(T − 1), 8h, 8w]``."""
        if latents.ndim != 5 or latents.shape[1] != self.latent_channels:
            raise ValueError(
                f"latents must be [B, {self.latent_channels}, T, h, w], got {tuple(latents.shape)}"
            )
        raw = self.denormalize(latents.to(self.device)).to(self.dtype)
        return self.model.decode(raw).sample.float().clamp(-1.0, 1.0)

    @torch.no_grad()
    def image_condition(self, portrait: torch.Tensor, num_frames: int = 81) -> torch.Tensor:
        """``y = [mask (4), latents of (portrait, then num_frames − 1 zero frames) (16)]``, fp32.

        The zero frames (mid-grey in [−1, 1]) are what Wan encodes after the portrait; the causal encoder
        makes their latents depend on the portrait, so they cannot be precomputed.
        """
        if portrait.ndim != 4 or portrait.shape[1] != 3:
            raise ValueError(f"portrait must be [B, 3, H, W], got {tuple(portrait.shape)}")
        latent_frame_count(num_frames)
        batch, _, height, width = portrait.shape
        video = torch.zeros(batch, 3, num_frames, height, width, device=self.device, dtype=self.dtype)
        video[:, :, 0] = portrait.to(self.device, self.dtype)
        latents = self.encode(video)
        mask = first_frame_mask(num_frames, latents.shape[-2], latents.shape[-1], device=latents.device)
        return torch.cat([mask.expand(batch, -1, -1, -1, -1), latents], dim=1)


def _check_video(video: torch.Tensor) -> None:
    if video.ndim != 5 or video.shape[1] != 3:
        raise ValueError(f"video must be [B, 3, F, H, W], got {tuple(video.shape)}")
    latent_frame_count(video.shape[2])
    height, width = video.shape[-2:]
    if height % SPATIAL_STRIDE or width % SPATIAL_STRIDE:
        raise ValueError(
            f"video height and width must be multiples of {SPATIAL_STRIDE}, got {height}×{width}"
        )
