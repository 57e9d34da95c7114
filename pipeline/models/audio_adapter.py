"""``audio_proj``: a chunk's windowed wav2vec2 embeddings → 32 audio tokens per latent frame (MODEL.md §2).

The VAE folds 4 video frames into each latent frame after the first, so each later latent frame is fed a
window spanning its 4 frames: the first half of its first frame's window, the centre of each middle frame's
and the second half of its last frame's (3 + 2 + 3 = 8 entries for a 5-window). The first latent frame stands
for video frame 0 alone and sees that frame's whole window through its own first layer.
"""

from __future__ import annotations

import torch
from diffusers.models.normalization import FP32LayerNorm
from torch import nn

from pipeline.streaming import VAE_TEMPORAL_STRIDE


class AudioProjModel(nn.Module):
    """Parameter names match the official checkpoint's ``audio_proj.{proj1,proj1_vf,proj2,proj3,norm}``."""

    def __init__(
        self,
        window: int = 5,
        layers: int = 12,
        channels: int = 768,
        intermediate_dim: int = 512,
        tokens: int = 32,
        token_dim: int = 768,
        temporal_stride: int = VAE_TEMPORAL_STRIDE,
    ) -> None:
        super().__init__()
        if window < 1 or window % 2 == 0:
            raise ValueError(f"window must be a positive odd number, got {window}")
        if temporal_stride < 2:
            raise ValueError(f"temporal_stride must be at least 2, got {temporal_stride}")
        self.window = window
        self.temporal_stride = temporal_stride
        self.tokens = tokens
        self.token_dim = token_dim
        later_entries = window + temporal_stride - 1
        self.proj1 = nn.Linear(window * layers * channels, intermediate_dim)
        self.proj1_vf = nn.Linear(later_entries * layers * channels, intermediate_dim)
        self.proj2 = nn.Linear(intermediate_dim, intermediate_dim)
        self.proj3 = nn.Linear(intermediate_dim, tokens * token_dim)
        # The reference's nn.LayerNorm (eps 1e-5) runs under an fp32 autocast region.
        self.norm = FP32LayerNorm(token_dim)

    def latent_frames(self, video_frames: int) -> int:
        return 1 + (video_frames - 1) // self.temporal_stride

    def forward(self, audio_embeds: torch.Tensor) -> torch.Tensor:
        """``[B, 1 + 4·n, window, layers, channels]`` → ``[B, 1 + n, tokens, token_dim]``."""
        if audio_embeds.ndim != 5:
            raise ValueError(
                "audio_embeds must be [batch, frames, window, layers, channels], "
                f"got {tuple(audio_embeds.shape)}"
            )
        video_frames = audio_embeds.shape[1]
        if video_frames < 1 or (video_frames - 1) % self.temporal_stride:
            raise ValueError(
                f"audio_embeds must cover 1 + {self.temporal_stride}·n video frames, got {video_frames}"
            )
        centre = self.window // 2
        later_latents = (video_frames - 1) // self.temporal_stride
        first = audio_embeds[:, :1].flatten(2)
        # [B, n, stride, window, layers, channels]: the video frames of each later latent frame.
        later = audio_embeds[:, 1:].unflatten(1, (later_latents, self.temporal_stride))
        later = torch.cat(
            [later[:, :, 0, : centre + 1], later[:, :, 1:-1, centre], later[:, :, -1, centre:]], dim=2
        ).flatten(2)
        hidden = torch.cat([torch.relu(self.proj1(first)), torch.relu(self.proj1_vf(later))], dim=1)
        hidden = torch.relu(self.proj2(hidden))
        tokens = self.proj3(hidden).unflatten(-1, (self.tokens, self.token_dim))
        return self.norm(tokens)
