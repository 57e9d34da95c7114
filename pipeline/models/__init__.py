"""The InfiniteTalk DiT (MODEL.md §2-3): diffusers' Wan2.1 I2V transformer plus the audio adapter.

The classes load on first use, so importing ``pipeline.models`` does not pull in torch and diffusers.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.models.audio_adapter import AudioProjModel
    from pipeline.models.audio_attention import AudioAttnProcessor, AudioCrossAttention
    from pipeline.models.transformer import InfiniteTalkTransformer3DModel, InfiniteTalkTransformerBlock

_LAZY = {
    "AudioProjModel": "pipeline.models.audio_adapter",
    "AudioAttnProcessor": "pipeline.models.audio_attention",
    "AudioCrossAttention": "pipeline.models.audio_attention",
    "InfiniteTalkTransformer3DModel": "pipeline.models.transformer",
    "InfiniteTalkTransformerBlock": "pipeline.models.transformer",
}

__all__ = [
    "AudioAttnProcessor",
    "AudioCrossAttention",
    "AudioProjModel",
    "InfiniteTalkTransformer3DModel",
    "InfiniteTalkTransformerBlock",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
