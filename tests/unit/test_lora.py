"""fuse_lora on LoRAs keyed like lightx2v's step-distill and FusionX files (Wan names, diffusion_model.)."""

from __future__ import annotations

import pytest
import torch

from pipeline.errors import WeightsError
from pipeline.presets import TINY
from pipeline.weights.dit import build_transformer
from pipeline.weights.lora import fuse_lora

CONFIG = TINY.transformer
DIM = CONFIG["num_attention_heads"] * CONFIG["attention_head_dim"]
RANK = 4
PREFIX = "diffusion_model."


def _random(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def model():
    return build_transformer(CONFIG, seed=0)


def _pair(
    module: str, out_features: int, in_features: int, seed: int, up="lora_up", down="lora_down"
) -> dict:
    return {
        f"{PREFIX}{module}.{up}.weight": _random(out_features, RANK, seed=seed),
        f"{PREFIX}{module}.{down}.weight": _random(RANK, in_features, seed=seed + 1),
    }


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_lightx2v_keys_fuse_exactly(model):
    lora = {
        **_pair("blocks.0.self_attn.q", DIM, DIM, seed=1),
        **_pair("blocks.1.cross_attn.k_img", DIM, CONFIG["added_kv_proj_dim"], seed=3),
        **_pair("blocks.1.ffn.0", CONFIG["ffn_dim"], DIM, seed=5),
        **_pair("head.head", 16 * 4, DIM, seed=7),
        f"{PREFIX}blocks.0.self_attn.q.diff_b": _random(DIM, seed=9),
        f"{PREFIX}blocks.1.cross_attn.norm_k_img.diff": _random(DIM, seed=10),
        f"{PREFIX}blocks.0.norm3.diff": _random(DIM, seed=11),
        f"{PREFIX}blocks.0.norm3.diff_b": _random(DIM, seed=12),
    }
    before = _snapshot(model)
    scale = 0.75
    fuse_lora(model, lora, scale, source="lightx2v.safetensors")

    def low_rank(module: str) -> torch.Tensor:
        return lora[f"{PREFIX}{module}.lora_up.weight"] @ lora[f"{PREFIX}{module}.lora_down.weight"]

    fused = {
        "blocks.0.attn1.to_q.weight": before["blocks.0.attn1.to_q.weight"]
        + scale * low_rank("blocks.0.self_attn.q"),
        "blocks.1.attn2.add_k_proj.weight": before["blocks.1.attn2.add_k_proj.weight"]
        + scale * low_rank("blocks.1.cross_attn.k_img"),
        "blocks.1.ffn.net.0.proj.weight": before["blocks.1.ffn.net.0.proj.weight"]
        + scale * low_rank("blocks.1.ffn.0"),
        "proj_out.weight": before["proj_out.weight"] + scale * low_rank("head.head"),
        "blocks.0.attn1.to_q.bias": before["blocks.0.attn1.to_q.bias"]
        + scale * lora[f"{PREFIX}blocks.0.self_attn.q.diff_b"],
        "blocks.1.attn2.norm_added_k.weight": before["blocks.1.attn2.norm_added_k.weight"]
        + scale * lora[f"{PREFIX}blocks.1.cross_attn.norm_k_img.diff"],
        # Wan's norm3 is the cross-attention norm: diffusers' norm2.
        "blocks.0.norm2.weight": before["blocks.0.norm2.weight"]
        + scale * lora[f"{PREFIX}blocks.0.norm3.diff"],
        "blocks.0.norm2.bias": before["blocks.0.norm2.bias"] + scale * lora[f"{PREFIX}blocks.0.norm3.diff_b"],
    }
    after = model.state_dict()
    for key, tensor in after.items():
        torch.testing.assert_close(tensor, fused.get(key, before[key]), rtol=0, atol=0, msg=key)


def test_alpha_scales_by_alpha_over_rank(model):
    lora = _pair("blocks.0.self_attn.o", DIM, DIM, seed=1)
    lora[f"{PREFIX}blocks.0.self_attn.o.alpha"] = torch.tensor(2.0)
    before = model.blocks[0].attn1.to_out[0].weight.clone()
    fuse_lora(model, lora, 1.5, source="alpha.safetensors")
    delta = (
        lora[f"{PREFIX}blocks.0.self_attn.o.lora_up.weight"]
        @ lora[f"{PREFIX}blocks.0.self_attn.o.lora_down.weight"]
    )
    torch.testing.assert_close(model.blocks[0].attn1.to_out[0].weight, before + 1.5 * (2.0 / RANK) * delta)


def test_peft_names_and_our_own_naming_work(model):
    before = _snapshot(model)
    peft = _pair("blocks.0.cross_attn.v", DIM, DIM, seed=1, up="lora_B", down="lora_A")
    ours = {
        "transformer.blocks.1.norm_x.diff": _random(DIM, seed=3),
        "transformer.blocks.1.audio_cross_attn.kv_linear.diff_b": _random(2 * DIM, seed=4),
    }
    fuse_lora(model, {**peft, **ours}, 1.0, source="peft.safetensors")
    delta = (
        peft[f"{PREFIX}blocks.0.cross_attn.v.lora_B.weight"]
        @ peft[f"{PREFIX}blocks.0.cross_attn.v.lora_A.weight"]
    )
    torch.testing.assert_close(
        model.blocks[0].attn2.to_v.weight, before["blocks.0.attn2.to_v.weight"] + delta
    )
    torch.testing.assert_close(
        model.blocks[1].norm_x.weight,
        before["blocks.1.norm_x.weight"] + ours["transformer.blocks.1.norm_x.diff"],
    )
    torch.testing.assert_close(
        model.blocks[1].audio_cross_attn.kv_linear.bias,
        before["blocks.1.audio_cross_attn.kv_linear.bias"]
        + ours["transformer.blocks.1.audio_cross_attn.kv_linear.diff_b"],
    )


def test_bf16_weights_are_rounded_once(model):
    model = build_transformer(CONFIG, seed=0, dtype=torch.bfloat16)
    lora = _pair("blocks.0.self_attn.k", DIM, DIM, seed=1)
    before = model.blocks[0].attn1.to_k.weight.clone()
    fuse_lora(model, lora, 1.0, source="bf16.safetensors")
    delta = (
        lora[f"{PREFIX}blocks.0.self_attn.k.lora_up.weight"]
        @ lora[f"{PREFIX}blocks.0.self_attn.k.lora_down.weight"]
    )
    assert model.blocks[0].attn1.to_k.weight.dtype == torch.bfloat16
    torch.testing.assert_close(
        model.blocks[0].attn1.to_k.weight, (before.float() + delta).to(torch.bfloat16), rtol=0, atol=0
    )


@pytest.mark.parametrize(
    ("lora", "named"),
    [
        (
            _pair("blocks.0.self_attn.qq", DIM, DIM, seed=1),
            "blocks.0.self_attn.qq.lora_up.weight targets no tensor",
        ),
        (
            _pair("blocks.7.self_attn.q", DIM, DIM, seed=1),
            "blocks.7.self_attn.q.lora_up.weight targets no tensor",
        ),
        ({f"{PREFIX}blocks.0.norm1.diff": torch.zeros(DIM)}, "blocks.0.norm1.diff targets no tensor"),
        (
            {f"{PREFIX}blocks.0.self_attn.q.weight": torch.zeros(DIM, DIM)},
            "blocks.0.self_attn.q.weight is not a LoRA tensor",
        ),
        (
            {f"{PREFIX}blocks.0.self_attn.q.lora_up.weight": torch.zeros(DIM, RANK)},
            "lora_up.weight has no down partner",
        ),
        ({f"{PREFIX}blocks.0.self_attn.q.alpha": torch.tensor(4.0)}, "alpha scales no up/down pair"),
        (
            {f"{PREFIX}blocks.0.self_attn.q.diff": torch.zeros(DIM, 3)},
            r"self_attn\.q\.diff has shape \(32, 3\)",
        ),
        ({f"{PREFIX}blocks.0.self_attn.q.diff_b": torch.zeros(3)}, r"q\.diff_b has shape \(3,\)"),
        (_pair("blocks.0.self_attn.q", DIM, DIM + 1, seed=1), "do not fit the model's tensor"),
        ({}, "no LoRA tensors"),
    ],
)
def test_bad_loras_are_named_and_change_nothing(model, lora, named):
    good = _pair("blocks.0.self_attn.v", DIM, DIM, seed=20)
    before = _snapshot(model)
    with pytest.raises(WeightsError, match=named):
        fuse_lora(model, {**good, **lora} if lora else {}, 1.0, source="bad.safetensors")
    for key, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[key]), key
