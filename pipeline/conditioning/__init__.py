"""Conditioning: the portrait (pixels, CLIP tokens, the VAE's ``y``) and the prompt (umT5) (MODEL.md §4).

``load_image`` loads eagerly (Pillow only); the torch, transformers and diffusers parts load on first use, so
an HTTP ingress that only validates uploads does not import them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline._lazy import lazy_attributes
from pipeline.conditioning.image import DEFAULT_MAX_PIXELS, load_image, portrait_tensor

if TYPE_CHECKING:
    from pipeline.conditioning.clip import ClipImageEncoder
    from pipeline.conditioning.text import TextEncoder
    from pipeline.conditioning.tokenizer import build_tiny_tokenizer, load_tokenizer
    from pipeline.conditioning.vae import WanVAE, first_frame_mask, latent_frame_count

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "ClipImageEncoder",
    "TextEncoder",
    "WanVAE",
    "build_tiny_tokenizer",
    "first_frame_mask",
    "latent_frame_count",
    "load_image",
    "load_tokenizer",
    "portrait_tensor",
]

__getattr__ = lazy_attributes(
    __name__,
    {
        "ClipImageEncoder": "pipeline.conditioning.clip",
        "TextEncoder": "pipeline.conditioning.text",
        "build_tiny_tokenizer": "pipeline.conditioning.tokenizer",
        "load_tokenizer": "pipeline.conditioning.tokenizer",
        "WanVAE": "pipeline.conditioning.vae",
        "first_frame_mask": "pipeline.conditioning.vae",
        "latent_frame_count": "pipeline.conditioning.vae",
    },
)
