"""InfiniteTalkTransformer3DModel, tiny preset: diffusers' Wan path untouched, the audio path per frame."""

from __future__ import annotations

import pytest
import torch
from diffusers import WanTransformer3DModel
from diffusers.models.attention_dispatch import (
    AttentionBackendName,
    _AttentionBackendRegistry,
    attention_backend,
)

from pipeline.models import AudioCrossAttention, InfiniteTalkTransformer3DModel
from pipeline.presets import TINY
from pipeline.weights.dit import build_transformer, is_adapter_key

CONFIG = TINY.transformer
FRAMES, HEIGHT, WIDTH = 3, 4, 6  # latent sizes: 3 latent frames = 9 video frames, 2×3 tokens per frame


def _inputs(batch: int = 1, seed: int = 1) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "hidden_states": torch.randn(batch, 36, FRAMES, HEIGHT, WIDTH, generator=generator),
        "timestep": torch.rand(batch, generator=generator) * 1000,
        "encoder_hidden_states": torch.randn(batch, 512, CONFIG["text_dim"], generator=generator),
        "encoder_hidden_states_image": torch.randn(batch, 257, CONFIG["image_dim"], generator=generator),
        "audio_embeds": torch.randn(
            batch, 4 * (FRAMES - 1) + 1, 5, CONFIG["audio_layers"], CONFIG["audio_dim"], generator=generator
        ),
    }


def _randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial values everywhere (norm weights too), so a misplaced tensor shows."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    return model


@pytest.fixture(scope="module")
def model() -> InfiniteTalkTransformer3DModel:
    return _randomise(build_transformer(CONFIG, seed=0))


def _run(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs)


def test_output_shape(model):
    out = _run(model, _inputs(batch=2))
    assert out.shape == (2, 16, FRAMES, HEIGHT, WIDTH)
    assert torch.isfinite(out).all()


def test_module_names_match_the_official_adapter_keys(model):
    keys = set(model.state_dict())
    for i in range(CONFIG["num_layers"]):
        for name in ("q_linear", "kv_linear", "proj"):
            assert {
                f"blocks.{i}.audio_cross_attn.{name}.weight",
                f"blocks.{i}.audio_cross_attn.{name}.bias",
            } <= keys
        assert {f"blocks.{i}.norm_x.weight", f"blocks.{i}.norm_x.bias"} <= keys
    assert {f"audio_proj.{name}.weight" for name in ("proj1", "proj1_vf", "proj2", "proj3", "norm")} <= keys
    d = CONFIG["num_attention_heads"] * CONFIG["attention_head_dim"]
    assert model.blocks[0].audio_cross_attn.kv_linear.weight.shape == (2 * d, CONFIG["audio_token_dim"])


def test_zero_audio_path_equals_stock_wan(model):
    """With the audio residual at zero, the output is diffusers' WanTransformer3DModel's, bit for bit."""
    ours = _randomise(InfiniteTalkTransformer3DModel(**CONFIG).eval(), seed=3)
    with torch.no_grad():
        for block in ours.blocks:
            block.audio_cross_attn.proj.weight.zero_()
            block.audio_cross_attn.proj.bias.zero_()
    stock = WanTransformer3DModel(**{k: v for k, v in CONFIG.items() if not k.startswith("audio_")}).eval()
    stock.load_state_dict({k: v for k, v in ours.state_dict().items() if not is_adapter_key(k)}, strict=True)
    inputs = _inputs(batch=2)
    expected = _run(stock, {k: v for k, v in inputs.items() if k != "audio_embeds"} | {"return_dict": False})[
        0
    ]
    torch.testing.assert_close(_run(ours, inputs), expected, rtol=0, atol=0)


def test_audio_changes_the_output(model):
    inputs = _inputs()
    other = dict(inputs, audio_embeds=inputs["audio_embeds"] + 1.0)
    assert not torch.allclose(_run(model, inputs), _run(model, other), atol=1e-4)


def test_batch_of_two_equals_two_batches_of_one(model):
    inputs = _inputs(batch=2)
    both = _run(model, inputs)
    for i in range(2):
        single = _run(model, {k: v[i : i + 1] for k, v in inputs.items()})
        torch.testing.assert_close(both[i : i + 1], single, atol=1e-5, rtol=1e-5)


def test_attention_backends_agree(model):
    inputs = _inputs(batch=2)
    with attention_backend("native"):
        native = _run(model, inputs)
    with attention_backend("_native_math"):
        math = _run(model, inputs)
    torch.testing.assert_close(native, math, atol=1e-5, rtol=1e-5)


def test_every_attention_goes_through_the_selected_backend(model, monkeypatch):
    """Per block: self-attention, image and text cross-attention, audio attention: 4 dispatched calls."""
    name = AttentionBackendName._NATIVE_MATH
    original = _AttentionBackendRegistry._backends[name]
    calls = []

    def counting(**kwargs):
        calls.append(kwargs["query"].shape)
        return original(**kwargs)

    monkeypatch.setitem(_AttentionBackendRegistry._backends, name, counting)
    with attention_backend("_native_math"):
        _run(model, _inputs())
    assert len(calls) == 4 * CONFIG["num_layers"]
    # The audio attention's queries are one latent frame each: [B·F, h·w, heads, head_dim].
    assert (FRAMES, HEIGHT * WIDTH // 4, CONFIG["num_attention_heads"], CONFIG["attention_head_dim"]) in calls


def test_set_attention_backend_reaches_the_audio_attention():
    model = build_transformer(CONFIG, seed=0)
    with attention_backend("native"):  # restores the global active backend set_attention_backend changes
        model.set_attention_backend("_native_math")
        audio = [m for m in model.modules() if isinstance(m, AudioCrossAttention)]
        assert len(audio) == CONFIG["num_layers"]
        assert all(m.processor._attention_backend == AttentionBackendName._NATIVE_MATH for m in audio)
        model.reset_attention_backend()
        assert all(m.processor._attention_backend is None for m in audio)


def test_audio_attention_matches_the_reference_math():
    """K then V, head by head (the reference's kv.view(B, N_a, 2, H, D)), softmax(q·kᵀ/√D)·v per frame."""
    torch.manual_seed(0)
    heads, head_dim, audio_dim, frames, per_frame, tokens = 2, 8, 12, 3, 5, 4
    dim = heads * head_dim
    attention = AudioCrossAttention(dim, audio_dim, heads).eval()
    x = torch.randn(2, frames * per_frame, dim)
    audio = torch.randn(2, frames, tokens, audio_dim)
    with torch.no_grad():
        out = attention(x, audio)
        rows = x.reshape(2 * frames, per_frame, dim)
        q = attention.q_linear(rows).view(2 * frames, per_frame, heads, head_dim).permute(0, 2, 1, 3)
        kv = attention.kv_linear(audio.reshape(2 * frames, tokens, audio_dim))
        k, v = kv.view(2 * frames, tokens, 2, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        weights = torch.softmax(q @ k.transpose(-1, -2) / head_dim**0.5, dim=-1)
        expected = attention.proj((weights @ v).transpose(1, 2).reshape(2, frames * per_frame, dim))
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-5)


def test_audio_attention_is_per_latent_frame():
    torch.manual_seed(0)
    attention = AudioCrossAttention(16, 12, 2).eval()
    x = torch.randn(1, 3 * 5, 16)
    audio = torch.randn(1, 3, 4, 12)
    changed = audio.clone()
    changed[:, 1] += 1.0
    with torch.no_grad():
        base, out = attention(x, audio), attention(x, changed)
    torch.testing.assert_close(out[:, :5], base[:, :5], rtol=0, atol=0)
    torch.testing.assert_close(out[:, 10:], base[:, 10:], rtol=0, atol=0)
    assert not torch.allclose(out[:, 5:10], base[:, 5:10])


def test_config_round_trips(tmp_path, model):
    model.save_config(tmp_path)
    again = InfiniteTalkTransformer3DModel.from_config(InfiniteTalkTransformer3DModel.load_config(tmp_path))
    for key, value in CONFIG.items():
        have = again.config[key]
        assert (list(have) if isinstance(have, (list, tuple)) else have) == (
            list(value) if isinstance(value, (list, tuple)) else value
        ), key
    assert len(again.blocks) == CONFIG["num_layers"]
    assert set(again.state_dict()) == set(model.state_dict())


def test_build_is_deterministic_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = build_transformer(CONFIG, seed=7)
    assert torch.equal(torch.rand(1), expected_next)
    b = build_transformer(CONFIG, seed=7)
    c = build_transformer(CONFIG, seed=8)
    assert all(
        torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )
    assert not torch.equal(a.blocks[0].attn1.to_q.weight, c.blocks[0].attn1.to_q.weight)
    assert not a.training and not any(p.requires_grad for p in a.parameters())


def test_bf16_build_keeps_the_sensitive_parts_in_fp32():
    model = build_transformer(CONFIG, seed=0, dtype=torch.bfloat16)
    assert model.blocks[0].attn1.to_q.weight.dtype == torch.bfloat16
    assert model.blocks[0].audio_cross_attn.kv_linear.weight.dtype == torch.bfloat16
    assert model.audio_proj.proj1.weight.dtype == torch.bfloat16
    for name in (
        "blocks.0.scale_shift_table",
        "blocks.0.norm2.weight",
        "blocks.0.norm_x.weight",
        "audio_proj.norm.weight",
        "condition_embedder.time_embedder.linear_1.weight",
    ):
        assert model.get_parameter(name).dtype == torch.float32, name
    assert model.rope.freqs_cos.dtype == torch.float32
    reference = _run(build_transformer(CONFIG, seed=0), _inputs())
    inputs = {k: (v.to(torch.bfloat16) if k != "timestep" else v) for k, v in _inputs().items()}
    out = _run(model, inputs)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), reference, atol=0.15, rtol=0.1)


@pytest.mark.parametrize(
    ("name", "value", "match"),
    [
        ("audio_embeds", torch.zeros(1, 8, 5, 12, 32), "audio_embeds"),
        ("audio_embeds", torch.zeros(1, 9, 5, 12, 16), "audio_embeds"),
        ("timestep", torch.zeros(2), "timestep"),
        ("encoder_hidden_states", torch.zeros(1, 256, 32), "encoder_hidden_states"),
        ("hidden_states", torch.zeros(1, 16, FRAMES, HEIGHT, WIDTH), "hidden_states"),
        ("hidden_states", torch.zeros(1, 36, FRAMES, HEIGHT, 5), "patch"),
    ],
)
def test_rejects_bad_inputs(model, name, value, match):
    with pytest.raises(ValueError, match=match):
        _run(model, dict(_inputs(), **{name: value}))
