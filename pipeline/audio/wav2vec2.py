"""InfiniteTalk's wav2vec2: CNN features resampled to the video frame rate, all layers kept (MODEL.md §1.3-4).

The stock ``Wav2Vec2Model`` cannot do this: the interpolation sits between the CNN and the feature projection,
and transformers 5.x collects per-layer hidden states with a decorator on the stock ``forward`` only. So the
encoder is walked here layer by layer, in the same order as the stock group-norm ("base") encoder, which is
what works on transformers 4.x and 5.x alike.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from transformers import Wav2Vec2Config, Wav2Vec2Model

from pipeline.audio.decode import SAMPLE_RATE
from pipeline.errors import WeightsError

VIDEO_FPS = 25


class InfiniteTalkWav2Vec2(Wav2Vec2Model):
    """A ``Wav2Vec2Model`` (same modules and state-dict keys) with InfiniteTalk's ``encode_layers``."""

    def __init__(self, config: Wav2Vec2Config) -> None:
        if config.do_stable_layer_norm:
            # The "large" layout normalises before each layer and once after the last; which of those is a
            # "layer output" differs between transformers 4.x and 5.x, and InfiniteTalk never uses it.
            raise WeightsError(
                "wav2vec2 config has do_stable_layer_norm=True (the large/stable-layer-norm variant); "
                "InfiniteTalk needs the base group-norm variant (chinese-wav2vec2-base)"
            )
        super().__init__(config)

    def encode_layers(self, input_values: torch.Tensor, n_frames: int) -> torch.Tensor:
        """``[B, T]`` raw 16 kHz samples → ``[B, n_frames, num_layers, hidden]``, one slice per layer.

        The embedding output (the input of layer 1) is not included. No input normalisation: the checkpoint's
        feature extractor has ``do_normalize`` off. Dropout and LayerDrop are inference no-ops (eval mode).
        """
        if input_values.ndim != 2:
            raise ValueError(f"input_values must be [batch, samples], got shape {tuple(input_values.shape)}")
        if n_frames < 1:
            raise ValueError(f"n_frames must be at least 1, got {n_frames}")
        features = self.feature_extractor(input_values)  # [B, C, T_cnn]
        features = F.interpolate(features, size=n_frames, mode="linear", align_corners=True)
        hidden, _ = self.feature_projection(features.transpose(1, 2))

        encoder = self.encoder
        hidden = hidden + encoder.pos_conv_embed(hidden)
        hidden = encoder.layer_norm(hidden)
        hidden = encoder.dropout(hidden)
        layer_outputs = []
        for layer in encoder.layers:
            output = layer(hidden, attention_mask=None)
            # transformers 4.x layers return a tuple (hidden, attentions?); 5.x returns the tensor.
            hidden = output[0] if isinstance(output, tuple) else output
            layer_outputs.append(hidden)
        return torch.stack(layer_outputs, dim=2)

    def min_input_samples(self) -> int:
        """Samples the CNN needs to emit one feature frame (its receptive field: 400 for the base model)."""
        config = self.config
        length = 1
        for kernel, stride in reversed(list(zip(config.conv_kernel, config.conv_stride, strict=True))):
            length = (length - 1) * stride + kernel
        return length


def video_frame_count(num_samples: int, fps: int = VIDEO_FPS, sample_rate: int = SAMPLE_RATE) -> int:
    """Whole video frames the audio covers: ``int(seconds × fps)``, computed in integers so it is exact."""
    if num_samples < 0:
        raise ValueError(f"num_samples must not be negative, got {num_samples}")
    return num_samples * fps // sample_rate


def speech_to_frame_embeddings(
    encoder: InfiniteTalkWav2Vec2,
    samples_16k: np.ndarray,
    n_frames: int,
) -> torch.Tensor:
    """16 kHz mono speech → ``[n_frames, num_layers, hidden]`` on the encoder's device and dtype.

    Speech shorter than the CNN's receptive field is zero-padded up to it (deterministic; the pipeline always
    passes at least one video frame of audio, 640 samples, so this only guards direct callers).
    """
    samples = np.asarray(samples_16k, dtype=np.float32)
    if samples.ndim != 1 or samples.size == 0:
        raise ValueError(f"expected non-empty mono samples of shape (n,), got {samples.shape}")
    shortfall = encoder.min_input_samples() - samples.size
    if shortfall > 0:
        samples = np.concatenate([samples, np.zeros(shortfall, dtype=np.float32)])
    parameter = next(encoder.parameters())
    with torch.inference_mode():
        input_values = torch.from_numpy(samples).to(parameter.device, parameter.dtype).unsqueeze(0)
        return encoder.encode_layers(input_values, n_frames)[0]
