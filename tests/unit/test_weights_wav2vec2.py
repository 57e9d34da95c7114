"""Loading chinese-wav2vec2-base/ strictly, from checkpoints keyed like the real (pre-training) one."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import Wav2Vec2Config, Wav2Vec2ForPreTraining

from pipeline.audio import InfiniteTalkWav2Vec2
from pipeline.errors import WeightsError
from pipeline.presets import TINY
from pipeline.weights.wav2vec2 import build_audio_encoder, load_audio_encoder

POS_CONV = "wav2vec2.encoder.pos_conv_embed.conv."
PARAMETRIZED = {
    "g": POS_CONV + "parametrizations.weight.original0",
    "v": POS_CONV + "parametrizations.weight.original1",
}
LEGACY = {"g": POS_CONV + "weight_g", "v": POS_CONV + "weight_v"}
PREPROCESSOR = {
    "do_normalize": False,
    "feature_extractor_type": "Wav2Vec2FeatureExtractor",
    "feature_size": 1,
    "padding_side": "right",
    "padding_value": 0.0,
    "return_attention_mask": False,
    "sampling_rate": 16000,
}


@pytest.fixture(scope="module")
def tiny() -> InfiniteTalkWav2Vec2:
    return build_audio_encoder(TINY.audio_encoder, seed=0)


def _pretraining_checkpoint(
    model: InfiniteTalkWav2Vec2, legacy_weight_norm: bool = True
) -> dict[str, torch.Tensor]:
    """The real file's key set: Wav2Vec2ForPreTraining's (``wav2vec2.`` prefix, quantizer, projections)."""
    pretraining = Wav2Vec2ForPreTraining(model.config)
    pretraining.wav2vec2.load_state_dict(model.state_dict(), strict=True)
    checkpoint = {
        key: tensor.detach().clone().contiguous() for key, tensor in pretraining.state_dict().items()
    }
    assert {"quantizer.codevectors", "project_hid.weight", "project_q.weight"} <= checkpoint.keys()
    assert "wav2vec2.masked_spec_embed" in checkpoint
    if legacy_weight_norm:
        for part in ("g", "v"):
            checkpoint[LEGACY[part]] = checkpoint.pop(PARAMETRIZED[part])
    return checkpoint


def _write_folder(folder: Path, checkpoint: dict, config: Wav2Vec2Config, fmt: str = "safetensors") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config.to_json_file(folder / "config.json")
    (folder / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR))
    if fmt == "safetensors":
        save_file(checkpoint, folder / "model.safetensors")
    else:
        torch.save(checkpoint, folder / "pytorch_model.bin")
    return folder


def _outputs(model: InfiniteTalkWav2Vec2) -> torch.Tensor:
    speech = torch.randn(1, 8000, generator=torch.Generator().manual_seed(2)) * 0.1
    with torch.no_grad():
        return model.encode_layers(speech.to(next(model.parameters()).dtype), 20).float()


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
@pytest.mark.parametrize("legacy_weight_norm", [True, False])
def test_loads_pretraining_checkpoint_strictly(tmp_path, tiny, fmt, legacy_weight_norm):
    checkpoint = _pretraining_checkpoint(tiny, legacy_weight_norm)
    folder = _write_folder(tmp_path / "chinese-wav2vec2-base", checkpoint, tiny.config, fmt)

    loaded = load_audio_encoder(folder, device="cpu", dtype=torch.float32)

    assert isinstance(loaded, InfiniteTalkWav2Vec2)
    assert not loaded.training
    assert not any(p.requires_grad or p.is_meta for p in loaded.parameters())
    torch.testing.assert_close(_outputs(loaded), _outputs(tiny), atol=0, rtol=0)


def test_loads_in_the_requested_dtype(tmp_path, tiny):
    folder = _write_folder(tmp_path / "w", _pretraining_checkpoint(tiny), tiny.config)
    loaded = load_audio_encoder(folder, device="cpu", dtype=torch.bfloat16)
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    torch.testing.assert_close(_outputs(loaded), _outputs(tiny), atol=0.1, rtol=0.1)


def test_loads_an_unprefixed_base_model_checkpoint(tmp_path, tiny):
    checkpoint = {key: tensor.clone() for key, tensor in tiny.state_dict().items()}
    folder = _write_folder(tmp_path / "w", checkpoint, tiny.config)
    torch.testing.assert_close(_outputs(load_audio_encoder(folder)), _outputs(tiny), atol=0, rtol=0)


def test_mask_embedding_is_dropped_when_the_config_has_no_masking(tmp_path, tiny):
    config = Wav2Vec2Config(**{**TINY.audio_encoder, "mask_time_prob": 0.0})
    folder = _write_folder(tmp_path / "w", _pretraining_checkpoint(tiny), config)
    loaded = load_audio_encoder(folder)
    assert not hasattr(loaded, "masked_spec_embed")
    torch.testing.assert_close(_outputs(loaded), _outputs(tiny), atol=0, rtol=0)


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_missing_key_is_named(tmp_path, tiny, fmt):
    checkpoint = _pretraining_checkpoint(tiny)
    del checkpoint["wav2vec2.encoder.layers.3.attention.k_proj.weight"]
    folder = _write_folder(tmp_path / "w", checkpoint, tiny.config, fmt)
    with pytest.raises(WeightsError, match=r"missing tensors: encoder\.layers\.3\.attention\.k_proj\.weight"):
        load_audio_encoder(folder)


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ("wav2vec2.encoder.layers.0.extra_scale", "encoder.layers.0.extra_scale"),
        ("lm_head.weight", "lm_head.weight"),  # a fine-tuned CTC head is not a pre-training extra
        ("quantizer.extra", "quantizer.extra"),  # only the known quantizer tensors are dropped
    ],
)
def test_unexpected_key_is_named(tmp_path, tiny, extra, named):
    checkpoint = _pretraining_checkpoint(tiny)
    checkpoint[extra] = torch.zeros(3)
    folder = _write_folder(tmp_path / "w", checkpoint, tiny.config)
    with pytest.raises(WeightsError, match=f"unexpected tensors: {re.escape(named)}"):
        load_audio_encoder(folder)


def test_misshaped_key_is_named(tmp_path, tiny):
    checkpoint = _pretraining_checkpoint(tiny)
    checkpoint["wav2vec2.feature_projection.projection.weight"] = torch.zeros(7, 7)
    folder = _write_folder(tmp_path / "w", checkpoint, tiny.config)
    with pytest.raises(WeightsError, match=r"mis-shaped tensors: feature_projection\.projection\.weight"):
        load_audio_encoder(folder)


def test_error_names_the_weights_file(tmp_path, tiny):
    checkpoint = _pretraining_checkpoint(tiny)
    del checkpoint["wav2vec2.encoder.layer_norm.bias"]
    folder = _write_folder(tmp_path / "w", checkpoint, tiny.config)
    with pytest.raises(WeightsError, match=str(folder / "model.safetensors")):
        load_audio_encoder(folder)


def test_safetensors_is_preferred_over_bin(tmp_path, tiny):
    folder = _write_folder(tmp_path / "w", _pretraining_checkpoint(tiny), tiny.config)
    (folder / "pytorch_model.bin").write_bytes(b"not a checkpoint")
    torch.testing.assert_close(_outputs(load_audio_encoder(folder)), _outputs(tiny), atol=0, rtol=0)


def test_missing_folder(tmp_path):
    with pytest.raises(WeightsError, match=rf"{tmp_path / 'nowhere'}: wav2vec2 folder does not exist"):
        load_audio_encoder(tmp_path / "nowhere")


def test_missing_config(tmp_path, tiny):
    folder = _write_folder(tmp_path / "w", _pretraining_checkpoint(tiny), tiny.config)
    (folder / "config.json").unlink()
    with pytest.raises(WeightsError, match=rf"{folder / 'config.json'}: missing"):
        load_audio_encoder(folder)


def test_no_weights_file(tmp_path, tiny):
    folder = _write_folder(tmp_path / "w", _pretraining_checkpoint(tiny), tiny.config)
    (folder / "model.safetensors").unlink()
    with pytest.raises(WeightsError, match=rf"{folder}: no wav2vec2 weights"):
        load_audio_encoder(folder)


@pytest.mark.parametrize("name", ["model.safetensors", "pytorch_model.bin"])
def test_corrupt_weights_file(tmp_path, tiny, name):
    folder = _write_folder(tmp_path / "w", _pretraining_checkpoint(tiny), tiny.config)
    (folder / "model.safetensors").unlink()
    (folder / name).write_bytes(b"\x00garbage" * 10)
    with pytest.raises(WeightsError, match=rf"{folder / name}: cannot read the checkpoint"):
        load_audio_encoder(folder)


def test_bad_config_files(tmp_path, tiny):
    folder = _write_folder(tmp_path / "w", _pretraining_checkpoint(tiny), tiny.config)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(WeightsError, match="not a readable JSON config"):
        load_audio_encoder(folder)
    (folder / "config.json").write_text(json.dumps({"model_type": "hubert"}))
    with pytest.raises(WeightsError, match="not a wav2vec2 config"):
        load_audio_encoder(folder)


def test_stable_layer_norm_config_is_refused(tmp_path, tiny):
    config = Wav2Vec2Config(
        **{**TINY.audio_encoder, "do_stable_layer_norm": True, "feat_extract_norm": "layer"}
    )
    folder = _write_folder(tmp_path / "w", _pretraining_checkpoint(tiny), config)
    with pytest.raises(WeightsError, match=rf"{folder / 'config.json'}: .*do_stable_layer_norm"):
        load_audio_encoder(folder)


@pytest.mark.parametrize(
    ("change", "message"),
    [({"do_normalize": True}, "do_normalize"), ({"sampling_rate": 22050}, "sampling_rate 22050")],
)
def test_preprocessor_that_expects_other_input_is_refused(tmp_path, tiny, change, message):
    folder = _write_folder(tmp_path / "w", _pretraining_checkpoint(tiny), tiny.config)
    (folder / "preprocessor_config.json").write_text(json.dumps({**PREPROCESSOR, **change}))
    with pytest.raises(WeightsError, match=message):
        load_audio_encoder(folder)


def test_build_is_deterministic_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    first = build_audio_encoder(TINY.audio_encoder, seed=5)
    assert torch.equal(torch.rand(3), expected_next)

    second = build_audio_encoder(TINY.audio_encoder, seed=5)
    other = build_audio_encoder(TINY.audio_encoder, seed=6)
    for key, tensor in first.state_dict().items():
        assert torch.equal(tensor, second.state_dict()[key]), key
    assert not torch.equal(
        first.feature_projection.projection.weight, other.feature_projection.projection.weight
    )
    assert not first.training and not any(p.requires_grad for p in first.parameters())
    assert first.config.num_hidden_layers == 12
