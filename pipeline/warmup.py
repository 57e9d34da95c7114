"""A replica's first DiT passes, before it takes jobs: compilation (``pipeline.compilation``), kernel JIT
(SageAttention's Triton kernels) and cuDNN plans happen here, once per shape, instead of in a user's job.

``pass_inputs`` builds the transformer's inputs exactly as the pipeline passes them for one chunk (the same
shapes, dtypes and layouts), so a compiled block warmed up here is not compiled again by a job; the
benchmarks time passes on the same inputs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

import torch

from pipeline.components import Components
from pipeline.models.transformer import TEXT_TOKENS
from pipeline.pipeline import synchronize, working_size
from pipeline.streaming import CHUNK_FRAMES, VAE_SPATIAL_STRIDE, latent_frames

logger = logging.getLogger(__name__)

CHUNK_LATENT_FRAMES = latent_frames(CHUNK_FRAMES)  # one 81-frame chunk: 21 latent frames
IMAGE_TOKENS = 257  # CLIP ViT-H/14 at 224 px: 16×16 patches and the class token


def pass_inputs(
    config: dict[str, Any],
    width: int,
    height: int,
    device: torch.device | str,
    dtype: torch.dtype,
    batch: int = 1,
) -> dict[str, torch.Tensor]:
    """The transformer's inputs for one chunk at working size ``width`` x ``height``, as the pipeline passes
    them (batch 2 when guidance runs the negative prompt alongside)."""
    frames = CHUNK_LATENT_FRAMES
    audio_frames = 4 * (frames - 1) + 1
    stride = VAE_SPATIAL_STRIDE

    def noise(*shape: int) -> torch.Tensor:
        return (
            torch.randn(*shape, device=device, dtype=dtype)
            if str(device) != "meta"
            else torch.empty(*shape, device=device, dtype=dtype)
        )

    return {
        "hidden_states": noise(batch, config["in_channels"], frames, height // stride, width // stride),
        "timestep": torch.full((batch,), 999.0, device=device),
        "encoder_hidden_states": noise(batch, TEXT_TOKENS, config["text_dim"]),
        "encoder_hidden_states_image": noise(batch, IMAGE_TOKENS, config["image_dim"]),
        "audio_embeds": noise(
            batch, audio_frames, config["audio_window"], config["audio_layers"], config["audio_dim"]
        ),
    }


def warm_up(
    components: Components, sizes: Iterable[tuple[int, int]], guidance: bool = False
) -> dict[str, float]:
    """One DiT pass per requested output size (at its working size) with batch 1, and with batch 2 too when
    ``guidance`` and guided passes are batched; seconds per shape, keyed ``"WxH/batch"``."""
    batches = [1, 2] if guidance and components.batch_guidance else [1]
    config = dict(components.transformer.config)
    seconds: dict[str, float] = {}
    for width, height in sizes:
        working = working_size(width, height, components.preset.max_working_area)
        for batch in batches:
            key = f"{working[0]}x{working[1]}/{batch}"
            if key in seconds:
                continue
            inputs = pass_inputs(config, *working, components.device, components.dtype, batch)
            started = time.perf_counter()
            with torch.inference_mode():
                components.transformer(**inputs)
            synchronize(components.device)
            seconds[key] = time.perf_counter() - started
            logger.info("warm-up pass %s: %.1f s", key, seconds[key])
    return seconds
