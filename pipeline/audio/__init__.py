"""Speech → per-frame wav2vec2 embeddings → 5-frame windows (MODEL.md §1).

``decode_audio`` and ``normalize_loudness`` load eagerly (numpy, PyAV, pyloudnorm only); the torch and
transformers parts load on first use, so an HTTP ingress that only probes uploads does not import them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline._lazy import lazy_attributes
from pipeline.audio.decode import SAMPLE_RATE, decode_audio, normalize_loudness

if TYPE_CHECKING:
    from pipeline.audio.wav2vec2 import InfiniteTalkWav2Vec2, speech_to_frame_embeddings, video_frame_count
    from pipeline.audio.windows import pad_embeddings_to, window_audio_embeddings

__all__ = [
    "SAMPLE_RATE",
    "InfiniteTalkWav2Vec2",
    "decode_audio",
    "normalize_loudness",
    "pad_embeddings_to",
    "speech_to_frame_embeddings",
    "video_frame_count",
    "window_audio_embeddings",
]

__getattr__ = lazy_attributes(
    __name__,
    {
        "InfiniteTalkWav2Vec2": "pipeline.audio.wav2vec2",
        "speech_to_frame_embeddings": "pipeline.audio.wav2vec2",
        "video_frame_count": "pipeline.audio.wav2vec2",
        "pad_embeddings_to": "pipeline.audio.windows",
        "window_audio_embeddings": "pipeline.audio.windows",
    },
)
