"""What one denoising pass of the DiT takes at the seed's sizes, shared by the benchmarks."""

from __future__ import annotations

from typing import Any

import torch

from pipeline.models.transformer import TEXT_TOKENS

SEED_SIZES = ("720x720", "1280x720", "480x832")
CHUNK_LATENT_FRAMES = 21  # one 81-frame chunk
IMAGE_TOKENS = 257  # CLIP ViT-H/14 at 224 px: 16×16 patches and the class token


def pass_inputs(
    config: dict[str, Any],
    width: int,
    height: int,
    device: torch.device | str,
    dtype: torch.dtype,
    batch: int = 1,
) -> dict[str, torch.Tensor]:
    """The transformer's inputs for one chunk at ``width`` x ``height``, as the pipeline passes them (batch
    2 when guidance runs the negative prompt alongside)."""
    frames = CHUNK_LATENT_FRAMES
    audio_frames = 4 * (frames - 1) + 1

    def noise(*shape: int) -> torch.Tensor:
        return (
            torch.randn(*shape, device=device, dtype=dtype)
            if device != "meta"
            else torch.empty(*shape, device=device, dtype=dtype)
        )

    return {
        "hidden_states": noise(batch, config["in_channels"], frames, height // 8, width // 8),
        "timestep": torch.full((batch,), 999.0, device=device),
        "encoder_hidden_states": noise(batch, TEXT_TOKENS, config["text_dim"]),
        "encoder_hidden_states_image": noise(batch, IMAGE_TOKENS, config["image_dim"]),
        "audio_embeds": noise(
            batch, audio_frames, config["audio_window"], config["audio_layers"], config["audio_dim"]
        ),
    }
