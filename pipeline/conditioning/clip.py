"""CLIP image tokens for the DiT's image cross-attention (MODEL.md §4).

Wan feeds the open-clip ViT-H/14 vision tower the portrait squashed to 224×224 (aspect not kept, bicubic, no
antialias, straight from the [−1, 1] pixels) and takes the output of block 31 of 32, before the final
LayerNorm. transformers' ``hidden_states[-2]`` is exactly that tensor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPVisionModel

# OpenAI CLIP's pixel statistics, which the LAION / open-clip ViT-H/14 was trained with as well.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ClipImageEncoder(nn.Module):
    """``[B, 3, H, W]`` pixels in [−1, 1] → ``[B, 257, hidden]`` penultimate-block tokens."""

    def __init__(self, model: CLIPVisionModel) -> None:
        super().__init__()
        self.model = model

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def device(self) -> torch.device:
        return self.model.device

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        """Resize and normalise in fp32 (bicubic overshoot and the std division lose detail in bf16)."""
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"image must be [B, 3, H, W], got {tuple(image.shape)}")
        size = self.model.config.image_size
        pixels = F.interpolate(image.float(), size=(size, size), mode="bicubic", align_corners=False)
        mean = torch.tensor(CLIP_MEAN, device=pixels.device).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, device=pixels.device).view(1, 3, 1, 1)
        return ((pixels * 0.5 + 0.5) - mean) / std

    @torch.no_grad()
    def forward(self, image: torch.Tensor) -> torch.Tensor:
        pixels = self.preprocess(image.to(self.device)).to(self.dtype)
        return self.model(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
