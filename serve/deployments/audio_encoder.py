"""AudioEncoder: speech → per-frame wav2vec2 embeddings, on CPU or a small GPU fraction, own replicas."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from pipeline.components import load_speech_encoder
from pipeline.pipeline import encode_speech
from serve.config import AppConfig

logger = logging.getLogger("ray.serve")


class AudioEncoder:
    def __init__(self, config: dict[str, Any]) -> None:
        model = AppConfig.model_validate(config).model
        self._encoder = load_speech_encoder(model.preset, weights_dir=model.weights_dir, device=model.device)
        logger.info("audio encoder ready on %s", next(self._encoder.parameters()).device)

    def encode(self, speech: np.ndarray, frames: int) -> torch.Tensor:
        return encode_speech(self._encoder, speech, frames).cpu()
