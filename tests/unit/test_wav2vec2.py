"""InfiniteTalkWav2Vec2.encode_layers against the stock transformers Wav2Vec2Model on the tiny preset."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import Wav2Vec2Config, Wav2Vec2Model

from pipeline.audio import InfiniteTalkWav2Vec2, speech_to_frame_embeddings, video_frame_count
from pipeline.errors import WeightsError
from pipeline.presets import TINY

LAYERS = TINY.audio_encoder.get("num_hidden_layers", 12)
HIDDEN = TINY.audio_encoder["hidden_size"]
CNN_FRAMES_PER_SECOND = 49  # 16000 samples through the (10,5) + 4×(3,2) + 2×(2,2) CNN


@pytest.fixture(scope="module")
def models() -> tuple[InfiniteTalkWav2Vec2, Wav2Vec2Model]:
    torch.manual_seed(0)
    config = Wav2Vec2Config(**TINY.audio_encoder)
    ours = InfiniteTalkWav2Vec2(config).eval()
    stock = Wav2Vec2Model(config).eval()
    stock.load_state_dict(ours.state_dict(), strict=True)
    return ours, stock


@pytest.fixture(scope="module")
def speech() -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(2, 16_000, generator=generator) * 0.1


def _stock_layers(stock: Wav2Vec2Model, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The stock model's embedding output and its 12 per-layer outputs stacked as ``[B, T, 12, C]``."""
    with torch.no_grad():
        hidden_states = stock(x, output_hidden_states=True).hidden_states
    assert len(hidden_states) == LAYERS + 1
    return hidden_states[0], torch.stack(hidden_states[1 : LAYERS + 1], dim=2)


def _interpolate_by_hand(features: torch.Tensor, n_frames: int) -> torch.Tensor:
    """Linear, align_corners=True resampling of ``[B, C, T]`` along T, written out without F.interpolate."""
    length = features.shape[-1]
    out = torch.empty(*features.shape[:-1], n_frames, dtype=features.dtype)
    for j in range(n_frames):
        position = j * (length - 1) / (n_frames - 1) if n_frames > 1 else 0.0
        low = int(np.floor(position))
        high = min(low + 1, length - 1)
        weight = position - low
        out[..., j] = (1 - weight) * features[..., low] + weight * features[..., high]
    return out


def test_native_frame_count_equals_stock_layers(models, speech):
    ours, stock = models
    _, expected = _stock_layers(stock, speech)
    assert expected.shape[1] == CNN_FRAMES_PER_SECOND

    with torch.no_grad():
        got = ours.encode_layers(speech, CNN_FRAMES_PER_SECOND)

    assert got.shape == (2, CNN_FRAMES_PER_SECOND, LAYERS, HIDDEN)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("n_frames", [25, 80, 1])
def test_other_frame_counts_equal_stock_on_interpolated_features(models, speech, n_frames):
    ours, stock = models
    with torch.no_grad():
        cnn = stock.feature_extractor(speech)
    resampled = _interpolate_by_hand(cnn, n_frames)
    # align_corners=True: the first and last feature frames survive unchanged.
    torch.testing.assert_close(resampled[..., 0], cnn[..., 0])
    if n_frames > 1:
        torch.testing.assert_close(resampled[..., -1], cnn[..., -1])

    # Run the untouched stock model with its CNN output swapped for the hand-resampled features.
    handle = stock.feature_extractor.register_forward_hook(lambda module, args, output: resampled)
    try:
        _, expected = _stock_layers(stock, speech)
    finally:
        handle.remove()
    projected_inputs = []
    projection = ours.feature_projection
    handle = projection.register_forward_pre_hook(lambda module, args: projected_inputs.append(args[0]))
    try:
        with torch.no_grad():
            got = ours.encode_layers(speech, n_frames)
    finally:
        handle.remove()

    assert got.shape == (2, n_frames, LAYERS, HIDDEN)
    # The features entering the projection are the hand-resampled ones, up to torch computing the source
    # positions in float32 (≈ frame index × 1e-7 of a frame) ...
    torch.testing.assert_close(projected_inputs[0], resampled.transpose(1, 2), atol=2e-5, rtol=1e-5)
    # ... and twelve layers later that rounding is still far below any real difference.
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_resampling_changes_the_result(models, speech):
    """Guard against a no-op interpolation: 49 → 98 frames is not the native output repeated."""
    ours, _ = models
    with torch.no_grad():
        native = ours.encode_layers(speech, CNN_FRAMES_PER_SECOND)
        doubled = ours.encode_layers(speech, 2 * CNN_FRAMES_PER_SECOND)
    assert not torch.allclose(doubled[:, ::2], native, atol=1e-3)


def test_embedding_output_is_not_included(models, speech):
    ours, stock = models
    embedding, expected = _stock_layers(stock, speech)
    calls = []
    handles = [layer.register_forward_hook(lambda *_: calls.append(1)) for layer in ours.encoder.layers]
    try:
        with torch.no_grad():
            got = ours.encode_layers(speech, CNN_FRAMES_PER_SECOND)
    finally:
        for handle in handles:
            handle.remove()

    assert len(calls) == LAYERS  # every layer ran exactly once
    torch.testing.assert_close(got[:, :, 0], expected[:, :, 0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got[:, :, 0], embedding, atol=1e-3)
    torch.testing.assert_close(got[:, :, -1], stock(speech).last_hidden_state.detach(), atol=1e-5, rtol=1e-5)


def test_batch_items_are_independent(models, speech):
    ours, _ = models
    with torch.no_grad():
        batch = ours.encode_layers(speech, 30)
        single = ours.encode_layers(speech[1:], 30)
    torch.testing.assert_close(batch[1:], single, atol=1e-5, rtol=1e-5)


def test_stable_layer_norm_variant_is_refused():
    config = Wav2Vec2Config(
        **{**TINY.audio_encoder, "do_stable_layer_norm": True, "feat_extract_norm": "layer"}
    )
    with pytest.raises(WeightsError, match="do_stable_layer_norm"):
        InfiniteTalkWav2Vec2(config)


def test_encode_layers_rejects_bad_arguments(models, speech):
    ours, _ = models
    with pytest.raises(ValueError, match="n_frames"):
        ours.encode_layers(speech, 0)
    with pytest.raises(ValueError, match="batch, samples"):
        ours.encode_layers(speech[0], 10)


def test_speech_to_frame_embeddings(models, speech):
    ours, _ = models
    samples = speech[0].numpy()
    got = speech_to_frame_embeddings(ours, samples, 25)
    assert got.shape == (25, LAYERS, HIDDEN)
    assert got.is_inference() and not got.requires_grad
    with torch.no_grad():
        torch.testing.assert_close(got, ours.encode_layers(speech[:1], 25)[0])


def test_speech_to_frame_embeddings_follows_the_encoder_dtype(models, speech):
    ours, _ = models
    half = InfiniteTalkWav2Vec2(ours.config).eval().to(torch.bfloat16)
    half.load_state_dict(ours.state_dict())
    got = speech_to_frame_embeddings(half, speech[0].numpy(), 10)
    assert got.dtype == torch.bfloat16 and got.shape == (10, LAYERS, HIDDEN)
    assert torch.isfinite(got.float()).all()


def test_speech_shorter_than_the_receptive_field_is_padded(models):
    ours, _ = models
    assert ours.min_input_samples() == 400
    short = np.full(100, 0.1, dtype=np.float32)
    padded = np.concatenate([short, np.zeros(300, dtype=np.float32)])
    torch.testing.assert_close(
        speech_to_frame_embeddings(ours, short, 3), speech_to_frame_embeddings(ours, padded, 3)
    )
    with pytest.raises(ValueError, match="non-empty mono"):
        speech_to_frame_embeddings(ours, np.zeros(0, dtype=np.float32), 3)


@pytest.mark.parametrize(
    ("samples", "fps", "frames"),
    [
        (16_000, 25, 25),
        (15_999, 25, 24),
        (80_000, 25, 125),
        (640, 25, 1),
        (639, 25, 0),
        (0, 25, 0),
        (16_000, 30, 30),
    ],
)
def test_video_frame_count(samples, fps, frames):
    assert video_frame_count(samples, fps=fps) == frames


def test_video_frame_count_rejects_negative():
    with pytest.raises(ValueError, match="num_samples"):
        video_frame_count(-1)
