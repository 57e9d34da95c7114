"""Loading the umT5 encoder strictly from Wan's .pth layout and from a transformers text_encoder/ folder."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import UMT5EncoderModel

from pipeline.errors import WeightsError
from pipeline.presets import INFINITETALK_14B, TINY
from pipeline.weights.t5 import build_text_encoder, load_text_encoder

CONFIG = TINY.text_encoder
LAYERS = CONFIG["num_layers"]
WAN_FILE = "models_t5_umt5-xxl-enc-bf16.pth"

# HF name inside encoder.block.N → Wan's name inside blocks.N (T5SelfAttention in Wan's wan/modules/t5.py).
_TO_WAN_BLOCK = {
    "layer.0.layer_norm.weight": "norm1.weight",
    "layer.0.SelfAttention.q.weight": "attn.q.weight",
    "layer.0.SelfAttention.k.weight": "attn.k.weight",
    "layer.0.SelfAttention.v.weight": "attn.v.weight",
    "layer.0.SelfAttention.o.weight": "attn.o.weight",
    "layer.0.SelfAttention.relative_attention_bias.weight": "pos_embedding.embedding.weight",
    "layer.1.layer_norm.weight": "norm2.weight",
    "layer.1.DenseReluDense.wi_0.weight": "ffn.gate.0.weight",
    "layer.1.DenseReluDense.wi_1.weight": "ffn.fc1.weight",
    "layer.1.DenseReluDense.wo.weight": "ffn.fc2.weight",
}


@pytest.fixture(scope="module")
def reference() -> UMT5EncoderModel:
    model = build_text_encoder(CONFIG, seed=1)
    with torch.no_grad():  # non-trivial norms, so a norm mapped to the wrong place would show
        for name, parameter in model.named_parameters():
            if "layer_norm" in name:
                parameter.add_(torch.randn_like(parameter) * 0.3)
    return model


def to_wan(model: UMT5EncoderModel) -> dict[str, torch.Tensor]:
    """The state dict as Wan's T5Encoder (shared_pos=False) names it."""
    wan = {}
    for key, tensor in model.state_dict().items():
        if key == "shared.weight":
            wan["token_embedding.weight"] = tensor
        elif key == "encoder.final_layer_norm.weight":
            wan["norm.weight"] = tensor
        elif key.startswith("encoder.block."):
            index, rest = key.removeprefix("encoder.block.").split(".", 1)
            wan[f"blocks.{index}.{_TO_WAN_BLOCK[rest]}"] = tensor
    return {k: v.detach().clone() for k, v in wan.items()}


def _outputs(model: UMT5EncoderModel) -> torch.Tensor:
    ids = torch.randint(3, CONFIG["vocab_size"], (2, 40), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 25:] = 0
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).last_hidden_state.float()


def _write_folder(folder, model: UMT5EncoderModel, state_dict=None, shards: int = 1):
    folder.mkdir(parents=True, exist_ok=True)
    model.config.to_json_file(folder / "config.json")
    tensors = (
        state_dict
        if state_dict is not None
        else {
            k: v.detach().clone().contiguous()
            for k, v in model.state_dict().items()
            if k != "encoder.embed_tokens.weight"
        }
    )
    if shards == 1:
        save_file(tensors, folder / "model.safetensors")
        return folder
    keys = sorted(tensors)
    size = math.ceil(len(keys) / shards)
    weight_map = {}
    for shard in range(shards):
        name = f"model-{shard + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: tensors[k] for k in keys[shard * size : (shard + 1) * size]}
        save_file(part, folder / name)
        weight_map.update(dict.fromkeys(part, name))
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    return folder


def test_wan_key_names_are_wans(reference):
    # Literally the names of wan/modules/t5.py's T5Encoder(shared_pos=False) state dict.
    expected = {"token_embedding.weight", "norm.weight"}
    for i in range(LAYERS):
        expected |= {
            f"blocks.{i}.norm1.weight",
            f"blocks.{i}.attn.q.weight",
            f"blocks.{i}.attn.k.weight",
            f"blocks.{i}.attn.v.weight",
            f"blocks.{i}.attn.o.weight",
            f"blocks.{i}.norm2.weight",
            f"blocks.{i}.ffn.gate.0.weight",
            f"blocks.{i}.ffn.fc1.weight",
            f"blocks.{i}.ffn.fc2.weight",
            f"blocks.{i}.pos_embedding.embedding.weight",
        }
    assert set(to_wan(reference)) == expected


def test_loads_wan_pth_strictly(tmp_path, reference):
    path = tmp_path / WAN_FILE
    torch.save(to_wan(reference), path)
    loaded = load_text_encoder(path, config=CONFIG)
    torch.testing.assert_close(_outputs(loaded), _outputs(reference), atol=0, rtol=0)
    assert loaded.encoder.embed_tokens.weight is loaded.shared.weight
    assert not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())


def test_wan_gate_is_the_gelu_branch(tmp_path, reference):
    """Wan's FFN is fc2(fc1(x) · gelu_tanh(gate(x))); computed from Wan's tensors it must match the model."""
    wan = to_wan(reference)
    path = tmp_path / WAN_FILE
    torch.save(wan, path)
    loaded = load_text_encoder(path, config=CONFIG)
    x = torch.randn(3, 7, CONFIG["d_model"], generator=torch.Generator().manual_seed(5))
    gate = F.gelu(x @ wan["blocks.1.ffn.gate.0.weight"].T, approximate="tanh")
    expected = (x @ wan["blocks.1.ffn.fc1.weight"].T * gate) @ wan["blocks.1.ffn.fc2.weight"].T
    with torch.no_grad():
        actual = loaded.encoder.block[1].layer[1].DenseReluDense(x)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


def test_loads_in_the_requested_dtype(tmp_path, reference):
    path = tmp_path / WAN_FILE
    torch.save({k: v.to(torch.bfloat16) for k, v in to_wan(reference).items()}, path)
    loaded = load_text_encoder(path, config=CONFIG, dtype=torch.bfloat16)
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    torch.testing.assert_close(_outputs(loaded), _outputs(reference), atol=0.1, rtol=0.1)


@pytest.mark.parametrize("shards", [1, 2])
def test_loads_transformers_folder(tmp_path, reference, shards):
    folder = _write_folder(tmp_path / "text_encoder", reference, shards=shards)
    loaded = load_text_encoder(folder)
    torch.testing.assert_close(_outputs(loaded), _outputs(reference), atol=0, rtol=0)


def test_folder_with_only_the_encoder_embedding_name(tmp_path, reference):
    tensors = {k: v.detach().clone() for k, v in reference.state_dict().items() if k != "shared.weight"}
    folder = _write_folder(tmp_path / "text_encoder", reference, state_dict=tensors)
    torch.testing.assert_close(_outputs(load_text_encoder(folder)), _outputs(reference), atol=0, rtol=0)


def _wan_checkpoint(reference, change: str) -> tuple[dict, str]:
    wan = to_wan(reference)
    if change == "removed":
        del wan["blocks.1.attn.k.weight"]
        return wan, "missing tensors: encoder.block.1.layer.0.SelfAttention.k.weight"
    if change == "extra":
        wan["blocks.0.attn.extra.weight"] = torch.zeros(2)
        return wan, "unexpected tensors: blocks.0.attn.extra.weight"
    wan["blocks.0.ffn.fc1.weight"] = torch.zeros(3, 3)
    return wan, "mis-shaped tensors: encoder.block.0.layer.1.DenseReluDense.wi_1.weight"


def _folder_checkpoint(reference, change: str) -> tuple[dict, str]:
    tensors = {
        k: v.detach().clone() for k, v in reference.state_dict().items() if k != "encoder.embed_tokens.weight"
    }
    key = "encoder.block.0.layer.0.SelfAttention.q.weight"
    if change == "removed":
        del tensors[key]
        return tensors, f"missing tensors: {key}"
    if change == "extra":
        tensors["decoder.block.0.layer.0.SelfAttention.q.weight"] = torch.zeros(2)
        return tensors, "unexpected tensors: decoder.block.0.layer.0.SelfAttention.q.weight"
    tensors[key] = torch.zeros(5, 5)
    return tensors, f"mis-shaped tensors: {key} (checkpoint (5, 5)"


@pytest.mark.parametrize("change", ["removed", "extra", "misshaped"])
def test_wan_pth_is_strict(tmp_path, reference, change):
    checkpoint, message = _wan_checkpoint(reference, change)
    path = tmp_path / WAN_FILE
    torch.save(checkpoint, path)
    with pytest.raises(WeightsError, match=re.escape(message)) as raised:
        load_text_encoder(path, config=CONFIG)
    assert WAN_FILE in raised.value.message


@pytest.mark.parametrize("change", ["removed", "extra", "misshaped"])
def test_folder_is_strict(tmp_path, reference, change):
    checkpoint, message = _folder_checkpoint(reference, change)
    folder = _write_folder(tmp_path / "text_encoder", reference, state_dict=checkpoint)
    with pytest.raises(WeightsError, match=re.escape(message)) as raised:
        load_text_encoder(folder)
    assert "model.safetensors" in raised.value.message


def test_wan_pth_defaults_to_the_real_size(tmp_path, reference):
    assert INFINITETALK_14B.text_encoder["d_model"] == 4096
    path = tmp_path / WAN_FILE
    torch.save(to_wan(reference), path)
    with pytest.raises(WeightsError, match=r"mis-shaped tensors: encoder\.block\.0"):
        load_text_encoder(path)  # a tiny checkpoint against the umT5-xxl shapes


def test_missing_and_broken_inputs_are_named(tmp_path, reference):
    with pytest.raises(WeightsError, match=f"{WAN_FILE}: missing"):
        load_text_encoder(tmp_path / WAN_FILE)
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match=r"corrupt\.pth: cannot read the checkpoint"):
        load_text_encoder(corrupt, config=CONFIG)
    folder = tmp_path / "text_encoder"
    folder.mkdir()
    with pytest.raises(WeightsError, match=r"config\.json: missing"):
        load_text_encoder(folder)
    (folder / "config.json").write_text(json.dumps({"model_type": "t5"}))
    with pytest.raises(WeightsError, match="not a umT5 config"):
        load_text_encoder(folder)
    reference.config.to_json_file(folder / "config.json")
    with pytest.raises(WeightsError, match="text_encoder: no weights"):
        load_text_encoder(folder)


def test_every_random_builder_builds_where_the_model_runs_in_its_dtype(monkeypatch):
    """Off the host the 14B preset's models are built on their device in bf16 (on the meta device here: no
    memory), never on the host in fp32 and moved after; the DiT's own builder does the same (its test)."""
    from pipeline.presets import INFINITETALK_14B
    from pipeline.weights import clip, t5, vae, wav2vec2

    for module in (clip, t5, vae, wav2vec2):  # no moving at the end: what was built is what is checked
        monkeypatch.setattr(module, "placed", lambda model, device, dtype: model)
    for build, config in (
        (t5.build_text_encoder, INFINITETALK_14B.text_encoder),
        (clip.build_image_encoder, INFINITETALK_14B.image_encoder),
        (vae.build_vae, INFINITETALK_14B.vae),
        (wav2vec2.build_audio_encoder, INFINITETALK_14B.audio_encoder),
    ):
        model = build(config, 0, device="meta", dtype=torch.bfloat16)
        # transformers makes wav2vec2's masked_spec_embed with the legacy torch.Tensor(n), which ignores the
        # default device: the one parameter ``placed`` has to move.
        built = {
            (p.device.type, p.dtype) for n, p in model.named_parameters() if "masked_spec_embed" not in n
        }
        assert built == {("meta", torch.bfloat16)}, build
    assert torch.get_default_dtype() == torch.float32  # the default dtype is put back


def test_placed_moves_what_the_default_device_missed_and_leaves_host_builds_where_they_are():
    from pipeline.weights.random_init import placed

    stray = torch.nn.Linear(2, 2)  # built on the host, as torch.Tensor(n) builds whatever the context
    assert placed(stray, "meta", torch.bfloat16).weight.device.type == "meta"
    with torch.device("meta"):  # bench.weights_memory builds on the host's default device, meta
        on_meta = torch.nn.Linear(2, 2)
    assert placed(on_meta, "cpu", torch.bfloat16).weight.device.type == "meta"
