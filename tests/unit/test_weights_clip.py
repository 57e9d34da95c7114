"""Loading the CLIP vision tower strictly from Wan's two-tower .pth and from an image_encoder/ folder."""

from __future__ import annotations

import json
import re

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from pipeline.conditioning import ClipImageEncoder
from pipeline.errors import WeightsError
from pipeline.presets import TINY
from pipeline.weights.clip import build_image_encoder, load_image_encoder, model_prefix

CONFIG = TINY.image_encoder
DIM = CONFIG["hidden_size"]
HEADS = CONFIG["num_attention_heads"]
LAYERS = CONFIG["num_hidden_layers"]
WAN_FILE = "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"

# HF name in encoder.layers.N → Wan's name in visual.transformer.N (AttentionBlock, wan/modules/clip.py).
_TO_WAN_BLOCK = {
    "layer_norm1": "norm1",
    "self_attn.out_proj": "attn.proj",
    "layer_norm2": "norm2",
    "mlp.fc1": "mlp.0",
    "mlp.fc2": "mlp.2",
}
_TO_WAN_TOP = {
    "embeddings.patch_embedding.weight": "visual.patch_embedding.weight",
    "pre_layrnorm.weight": "visual.pre_norm.weight",
    "pre_layrnorm.bias": "visual.pre_norm.bias",
    "post_layernorm.weight": "visual.post_norm.weight",
    "post_layernorm.bias": "visual.post_norm.bias",
}


@pytest.fixture(scope="module")
def reference() -> ClipImageEncoder:
    encoder = build_image_encoder(CONFIG, seed=1)
    with torch.no_grad():
        for name, parameter in encoder.named_parameters():
            if "norm" in name:
                parameter.add_(torch.randn_like(parameter) * 0.3)
    return encoder


def _tower_state(encoder: ClipImageEncoder) -> dict[str, torch.Tensor]:
    """The tower's tensors without any ``vision_model.`` prefix, whichever transformers major built it."""
    prefix = model_prefix(encoder.model)
    return {k.removeprefix(prefix): v.detach().clone() for k, v in encoder.model.state_dict().items()}


def to_wan(encoder: ClipImageEncoder) -> dict[str, torch.Tensor]:
    """Wan's XLMRobertaCLIP state dict: the visual tower renamed, q/k/v fused, plus text tower and scale."""
    tower = _tower_state(encoder)
    wan = {name: tower[key] for key, name in _TO_WAN_TOP.items()}
    wan["visual.cls_embedding"] = tower["embeddings.class_embedding"].view(1, 1, DIM)
    wan["visual.pos_embedding"] = tower["embeddings.position_embedding.weight"].unsqueeze(0)
    for i in range(LAYERS):
        layer = f"encoder.layers.{i}"
        for part in ("weight", "bias"):
            wan[f"visual.transformer.{i}.attn.to_qkv.{part}"] = torch.cat(
                [tower[f"{layer}.self_attn.{p}_proj.{part}"] for p in "qkv"]
            )
            for hf, wan_name in _TO_WAN_BLOCK.items():
                wan[f"visual.transformer.{i}.{wan_name}.{part}"] = tower[f"{layer}.{hf}.{part}"]
    wan["visual.head"] = torch.randn(DIM, CONFIG["projection_dim"])
    wan["log_scale"] = torch.tensor(2.6592)
    wan["textual.token_embedding.weight"] = torch.randn(10, 8)
    wan["textual.blocks.0.attn.q.weight"] = torch.randn(8, 8)
    wan["textual.head.0.weight"] = torch.randn(8, 8)
    return wan


def _image() -> torch.Tensor:
    return torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(0)) * 2 - 1


def _write_folder(folder, encoder: ClipImageEncoder, tensors=None, config=None):
    folder.mkdir(parents=True, exist_ok=True)
    if config is None:
        encoder.model.config.to_json_file(folder / "config.json")
    else:
        (folder / "config.json").write_text(json.dumps(config))
    if tensors is None:
        tensors = {f"vision_model.{k}": v for k, v in _tower_state(encoder).items()}
        tensors["visual_projection.weight"] = torch.randn(CONFIG["projection_dim"], DIM)
    save_file({k: v.contiguous() for k, v in tensors.items()}, folder / "model.safetensors")
    return folder


def test_wan_key_names_are_wans(reference):
    # Literally the names of wan/modules/clip.py's XLMRobertaCLIP.visual (VisionTransformer, pool 'token').
    expected = {
        "visual.patch_embedding.weight",
        "visual.cls_embedding",
        "visual.pos_embedding",
        "visual.pre_norm.weight",
        "visual.pre_norm.bias",
        "visual.post_norm.weight",
        "visual.post_norm.bias",
        "visual.head",
    }
    for i in range(LAYERS):
        for module in ("norm1", "attn.to_qkv", "attn.proj", "norm2", "mlp.0", "mlp.2"):
            expected |= {f"visual.transformer.{i}.{module}.weight", f"visual.transformer.{i}.{module}.bias"}
    wan = to_wan(reference)
    assert {k for k in wan if k.startswith("visual.")} == expected
    assert wan["visual.cls_embedding"].shape == (1, 1, DIM)
    assert wan["visual.pos_embedding"].shape == (1, 257, DIM)
    assert wan["visual.transformer.0.attn.to_qkv.weight"].shape == (3 * DIM, DIM)


def test_loads_wan_pth_strictly(tmp_path, reference):
    path = tmp_path / WAN_FILE
    torch.save(to_wan(reference), path)
    loaded = load_image_encoder(path, config=CONFIG)
    torch.testing.assert_close(loaded(_image()), reference(_image()), atol=0, rtol=0)
    assert not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())


def _layer(encoder: ClipImageEncoder, index: int):
    return encoder.model.get_submodule(f"{model_prefix(encoder.model)}encoder.layers.{index}")


def test_wan_fused_qkv_splits_as_wan_attends(tmp_path, reference):
    """Wan's attention from the fused tensor, written out, must equal the loaded model's attention."""
    wan = to_wan(reference)
    path = tmp_path / WAN_FILE
    torch.save(wan, path)
    loaded = load_image_encoder(path, config=CONFIG)
    x = torch.randn(2, 9, DIM, generator=torch.Generator().manual_seed(3))
    qkv = F.linear(
        x, wan["visual.transformer.2.attn.to_qkv.weight"], wan["visual.transformer.2.attn.to_qkv.bias"]
    )
    q, k, v = qkv.view(2, 9, 3, HEADS, DIM // HEADS).unbind(2)  # exactly Wan's SelfAttention.forward
    attended = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    attended = attended.transpose(1, 2).reshape(2, 9, DIM)
    expected = F.linear(
        attended, wan["visual.transformer.2.attn.proj.weight"], wan["visual.transformer.2.attn.proj.bias"]
    )
    with torch.no_grad():
        actual = _layer(loaded, 2).self_attn(x)[0]
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


def test_wan_mlp_uses_exact_gelu(tmp_path, reference):
    """Wan's MLP is Linear → nn.GELU() (exact erf, not QuickGELU) → Linear."""
    wan = to_wan(reference)
    path = tmp_path / WAN_FILE
    torch.save(wan, path)
    loaded = load_image_encoder(path, config=CONFIG)
    x = torch.randn(2, 9, DIM, generator=torch.Generator().manual_seed(4))
    hidden = F.gelu(
        F.linear(x, wan["visual.transformer.1.mlp.0.weight"], wan["visual.transformer.1.mlp.0.bias"])
    )
    expected = F.linear(
        hidden, wan["visual.transformer.1.mlp.2.weight"], wan["visual.transformer.1.mlp.2.bias"]
    )
    with torch.no_grad():
        actual = _layer(loaded, 1).mlp(x)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


def test_loads_in_the_requested_dtype(tmp_path, reference):
    path = tmp_path / WAN_FILE
    torch.save(to_wan(reference), path)
    loaded = load_image_encoder(path, config=CONFIG, dtype=torch.bfloat16)
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    torch.testing.assert_close(loaded(_image()).float(), reference(_image()), atol=0.1, rtol=0.1)


@pytest.mark.parametrize("with_projection", [True, False])
def test_loads_transformers_folder(tmp_path, reference, with_projection):
    tensors = {f"vision_model.{k}": v for k, v in _tower_state(reference).items()}
    if with_projection:  # CLIPVisionModelWithProjection's file, as in the Wan diffusers repo
        tensors["visual_projection.weight"] = torch.randn(CONFIG["projection_dim"], DIM)
    folder = _write_folder(tmp_path / "image_encoder", reference, tensors=tensors)
    loaded = load_image_encoder(folder)
    torch.testing.assert_close(loaded(_image()), reference(_image()), atol=0, rtol=0)


def test_folder_may_hold_a_full_clip_config(tmp_path, reference):
    full = {"model_type": "clip", "vision_config": reference.model.config.to_dict(), "text_config": {}}
    folder = _write_folder(tmp_path / "image_encoder", reference, config=full)
    torch.testing.assert_close(load_image_encoder(folder)(_image()), reference(_image()), atol=0, rtol=0)


def _wan_checkpoint(reference, change: str) -> tuple[dict, str]:
    wan = to_wan(reference)
    if change == "removed":
        del wan["visual.transformer.3.mlp.2.bias"]
        return wan, "mlp.fc2.bias"
    if change == "extra":
        wan["visual.extra.weight"] = torch.zeros(2)
        return wan, "unexpected tensors: visual.extra.weight"
    if change == "text_scale_spelling":  # only Wan's own 'log_scale' is dropped, nothing that looks like it
        wan["logit_scale"] = torch.tensor(1.0)
        return wan, "unexpected tensors: logit_scale"
    if change == "head":
        wan["visual.head"] = torch.zeros(DIM, 7)
        return wan, "mis-shaped tensors: visual.head"
    wan["visual.transformer.0.norm2.weight"] = torch.zeros(DIM + 1)
    return wan, "mis-shaped tensors:"


@pytest.mark.parametrize("change", ["removed", "extra", "text_scale_spelling", "head", "misshaped"])
def test_wan_pth_is_strict(tmp_path, reference, change):
    checkpoint, message = _wan_checkpoint(reference, change)
    path = tmp_path / WAN_FILE
    torch.save(checkpoint, path)
    with pytest.raises(WeightsError, match=re.escape(message)) as raised:
        load_image_encoder(path, config=CONFIG)
    assert WAN_FILE in raised.value.message
    if change == "misshaped":
        assert "encoder.layers.0.layer_norm2.weight" in raised.value.message
    if change == "removed":
        assert "missing tensors:" in raised.value.message


def _folder_checkpoint(reference, change: str) -> tuple[dict, str]:
    tensors = {f"vision_model.{k}": v for k, v in _tower_state(reference).items()}
    key = "encoder.layers.1.self_attn.v_proj.weight"
    if change == "removed":
        del tensors[f"vision_model.{key}"]
        return tensors, key
    if change == "extra":
        tensors["text_model.embeddings.token_embedding.weight"] = torch.zeros(2)
        return tensors, "unexpected tensors: text_model.embeddings.token_embedding.weight"
    if change == "projection":
        tensors["visual_projection.weight"] = torch.zeros(3, DIM)
        return tensors, "mis-shaped tensors: visual_projection.weight"
    tensors[f"vision_model.{key}"] = torch.zeros(DIM, DIM + 2)
    return tensors, key


@pytest.mark.parametrize("change", ["removed", "extra", "projection", "misshaped"])
def test_folder_is_strict(tmp_path, reference, change):
    checkpoint, message = _folder_checkpoint(reference, change)
    folder = _write_folder(tmp_path / "image_encoder", reference, tensors=checkpoint)
    with pytest.raises(WeightsError, match=re.escape(message)) as raised:
        load_image_encoder(folder)
    assert "model.safetensors" in raised.value.message
    expected_kind = {"removed": "missing", "misshaped": "mis-shaped"}.get(change)
    if expected_kind:
        assert f"{expected_kind} tensors:" in raised.value.message


def test_missing_and_broken_inputs_are_named(tmp_path, reference):
    with pytest.raises(WeightsError, match=f"{WAN_FILE}: missing"):
        load_image_encoder(tmp_path / WAN_FILE)
    folder = tmp_path / "image_encoder"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "siglip_vision_model"}))
    with pytest.raises(WeightsError, match="not a CLIP vision config"):
        load_image_encoder(folder)
    reference.model.config.to_json_file(folder / "config.json")
    with pytest.raises(WeightsError, match="image_encoder: no weights"):
        load_image_encoder(folder)
