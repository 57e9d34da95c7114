"""The InfiniteTalk DiT (MODEL.md §2-3): diffusers' Wan2.1 I2V transformer plus the audio adapter.

The classes load on first use, so importing ``pipeline.models`` does not pull in torch and diffusers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline._lazy import lazy_attributes

if TYPE_CHECKING:
    from pipeline.models.audio_adapter import AudioProjModel
    from pipeline.models.audio_attention import AudioAttnProcessor, AudioCrossAttention
    from pipeline.models.transformer import InfiniteTalkTransformer3DModel, InfiniteTalkTransformerBlock

__all__ = [
    "AudioAttnProcessor",
    "AudioCrossAttention",
    "AudioProjModel",
    "InfiniteTalkTransformer3DModel",
    "InfiniteTalkTransformerBlock",
]

__getattr__ = lazy_attributes(
    __name__,
    {
        "AudioProjModel": "pipeline.models.audio_adapter",
        "AudioAttnProcessor": "pipeline.models.audio_attention",
        "AudioCrossAttention": "pipeline.models.audio_attention",
        "InfiniteTalkTransformer3DModel": "pipeline.models.transformer",
        "InfiniteTalkTransformerBlock": "pipeline.models.transformer",
    },
)
