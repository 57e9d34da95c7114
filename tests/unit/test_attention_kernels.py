"""Self-attention kernels: which one runs where (and why not), the reference path left to diffusers, the other
kernels reached from every block's self-attention only, and SageAttention's wrapper called as it must be."""

from __future__ import annotations

import logging
import sys
import types

import pytest
import torch
from diffusers.models.transformers.transformer_wan import WanAttnProcessor
from torch._subclasses.fake_tensor import FakeTensorMode

import pipeline.models.wan_attention as wan_attention
from pipeline.components import load_components
from pipeline.errors import InputError
from pipeline.models import attention_kernels
from pipeline.models.attention_kernels import AttentionKernel, attend, resolve_kernel, unusable_reason
from pipeline.models.wan_attention import WanAttentionProcessor
from pipeline.presets import TINY
from pipeline.warmup import pass_inputs
from pipeline.weights.dit import build_transformer

CPU, CUDA = torch.device("cpu"), torch.device("cuda")  # reasons are decided from the device, no GPU needed
BF16, FP32 = torch.bfloat16, torch.float32


@pytest.fixture
def hopper(monkeypatch):
    """A CUDA device of compute capability 9.0 with cuDNN, as far as the kernel checks can tell."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(torch.backends.cudnn, "is_available", lambda: True)


@pytest.fixture
def model():
    generator = torch.Generator().manual_seed(0)
    model = build_transformer(dict(TINY.transformer), seed=0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    return model


def _inputs() -> dict[str, torch.Tensor]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        return pass_inputs(dict(TINY.transformer), 80, 64, "cpu", torch.float32)


def _run(model, inputs) -> torch.Tensor:
    with torch.inference_mode():
        return model(**inputs)


@pytest.mark.parametrize("kernel", ["sdpa-cudnn", "sdpa-flash", "sage", "fa4"])
def test_gpu_kernels_are_refused_off_the_gpu_with_the_reason(kernel):
    with pytest.raises(InputError, match=f"'{kernel}' runs on CUDA GPUs; the model is on cpu"):
        resolve_kernel(kernel, CPU, FP32, 128)


def test_auto_is_sdpa_off_the_gpu(caplog):
    with caplog.at_level(logging.INFO, logger=attention_kernels.__name__):
        assert resolve_kernel("auto", CPU, FP32, 128) is AttentionKernel.SDPA
    assert "self-attention kernel: sdpa (auto; not usable: 'sdpa-cudnn' runs on CUDA GPUs" in caplog.text


def test_auto_takes_cudnn_on_a_gpu_with_cudnn_and_says_what_it_fell_back_from(hopper, monkeypatch, caplog):
    assert resolve_kernel("auto", CUDA, BF16, 128) is AttentionKernel.SDPA_CUDNN
    monkeypatch.setattr(torch.backends.cudnn, "is_available", lambda: False)
    with caplog.at_level(logging.INFO, logger=attention_kernels.__name__):
        assert resolve_kernel("auto", CUDA, BF16, 128) is AttentionKernel.SDPA
    assert "not usable: 'sdpa-cudnn' needs cuDNN" in caplog.text


@pytest.mark.parametrize(
    ("capability", "dtype", "head_dim", "reason"),
    [
        ((7, 5), BF16, 128, "compute capability 8.0 or newer, this GPU has 7.5"),  # a T4
        ((9, 0), FP32, 128, "runs in bf16 or fp16, the model is in float32"),
        ((9, 0), BF16, 100, "multiples of 8 up to 256"),
        ((9, 0), BF16, 512, "multiples of 8 up to 256"),
    ],
)
def test_auto_falls_back_to_sdpa_where_the_fused_kernels_cannot_run(
    hopper, monkeypatch, capability, dtype, head_dim, reason
):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert resolve_kernel("auto", CUDA, dtype, head_dim) is AttentionKernel.SDPA
    for kernel in ("sdpa-cudnn", "sdpa-flash"):
        with pytest.raises(InputError, match=reason):
            resolve_kernel(kernel, CUDA, dtype, head_dim)


def test_auto_order_leaves_sage_and_fa4_out_and_ends_with_what_runs_anywhere():
    # SageAttention 1.0.6 measured slower than cuDNN on the H200 (docs/architecture.md, "Fast path");
    # FlashAttention-4 is not measured yet.
    assert AttentionKernel.SAGE not in attention_kernels.AUTO_ORDER
    assert AttentionKernel.FA4 not in attention_kernels.AUTO_ORDER
    assert attention_kernels.AUTO_ORDER[-1] is AttentionKernel.SDPA


def test_sage_needs_its_package_and_a_head_dim_it_has_kernels_for(hopper, monkeypatch):
    monkeypatch.setattr(attention_kernels.importlib.util, "find_spec", lambda name: None)
    assert "pip install sageattention" in unusable_reason(AttentionKernel.SAGE, CUDA, BF16, 128)
    monkeypatch.setattr(attention_kernels.importlib.util, "find_spec", lambda name: object())
    assert unusable_reason(AttentionKernel.SAGE, CUDA, BF16, 128) is None
    assert "head dims" in unusable_reason(AttentionKernel.SAGE, CUDA, BF16, 80)


def test_fa4_needs_hopper_or_blackwell_and_flash_attention_4(hopper, monkeypatch):
    installed: set[str] = set()
    monkeypatch.setattr(
        attention_kernels.importlib.util, "find_spec", lambda name: object() if name in installed else None
    )
    assert "pip install flash-attn-4" in unusable_reason(AttentionKernel.FA4, CUDA, BF16, 128)
    installed.add("flash_attn")  # FlashAttention-2 has no flash_attn.cute
    assert "pip install flash-attn-4" in unusable_reason(AttentionKernel.FA4, CUDA, BF16, 128)
    installed.add("flash_attn.cute")
    assert unusable_reason(AttentionKernel.FA4, CUDA, BF16, 128) is None
    assert "bf16 or fp16" in unusable_reason(AttentionKernel.FA4, CUDA, FP32, 128)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert "Hopper or Blackwell" in unusable_reason(AttentionKernel.FA4, CUDA, BF16, 128)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (10, 0))
    assert unusable_reason(AttentionKernel.FA4, CUDA, BF16, 128) is None


def test_unknown_kernels_are_refused_by_name():
    with pytest.raises(ValueError, match="'flash9' is not a valid AttentionKernel"):
        resolve_kernel("flash9", CPU, FP32, 128)


def test_load_components_records_the_resolved_kernel_and_refuses_one_that_cannot_run():
    components = load_components("tiny", device="cpu", with_audio_encoder=False, attention="auto")
    assert components.identities["attention"] == "sdpa"
    assert components.transformer.attention_kernel is AttentionKernel.SDPA
    with pytest.raises(InputError, match="'sage' runs on CUDA GPUs"):
        load_components("tiny", device="cpu", with_audio_encoder=False, attention="sage")


def test_the_reference_kernel_keeps_diffusers_own_processors(model):
    model.set_attention_kernel("sdpa")
    processors = [attention.processor for block in model.blocks for attention in (block.attn1, block.attn2)]
    assert all(type(processor) is WanAttnProcessor for processor in processors)
    with pytest.raises(ValueError, match="resolve 'auto'"):
        model.set_attention_kernel("auto")


def test_whole_sequence_processor_computes_what_diffusers_does(model):
    inputs = _inputs()
    reference = _run(model, inputs)
    for block in model.blocks:
        block.attn1.set_processor(WanAttentionProcessor(None, AttentionKernel.SDPA))
        block.attn2.set_processor(WanAttentionProcessor(None, AttentionKernel.SDPA))
    torch.testing.assert_close(_run(model, inputs), reference, atol=0, rtol=0)


@pytest.mark.parametrize("token_chunk", [None, 37])
def test_another_kernel_runs_every_self_attention_and_nothing_else(model, monkeypatch, token_chunk):
    inputs = _inputs()
    reference = _run(model, inputs)
    calls: list[tuple[tuple[int, ...], AttentionKernel]] = []

    def sdpa_standing_in(query, key, value, kernel):  # the CPU has no cuDNN or flash kernels
        calls.append((tuple(key.shape), kernel))
        out = torch.nn.functional.scaled_dot_product_attention(
            *(t.transpose(1, 2) for t in (query, key, value))
        )
        return out.transpose(1, 2)

    monkeypatch.setattr(wan_attention, "attend", sdpa_standing_in)
    model.set_token_chunk(token_chunk)
    model.set_attention_kernel(AttentionKernel.SDPA_FLASH)
    assert all(type(block.attn1.processor) is WanAttentionProcessor for block in model.blocks)
    assert all(block.attn2.processor.kernel is AttentionKernel.SDPA for block in model.blocks if token_chunk)
    torch.testing.assert_close(_run(model, inputs), reference, atol=2e-6, rtol=1e-5)
    tokens = 21 * (64 // 16) * (80 // 16)  # latent frames x patches: the whole sequence is every key
    assert calls == [((1, tokens, 2, 16), AttentionKernel.SDPA_FLASH)] * TINY.transformer["num_layers"]
    model.set_attention_kernel(AttentionKernel.SDPA)
    assert all(
        type(block.attn1.processor) is (WanAttnProcessor if token_chunk is None else WanAttentionProcessor)
        for block in model.blocks
    )


def test_attend_is_for_the_other_kernels_only():
    query = torch.zeros(1, 4, 2, 16)
    with pytest.raises(ValueError, match="not 'sdpa'"):
        attend(query, query, query, AttentionKernel.SDPA)


def test_sage_op_centres_k_out_of_place_and_asks_for_the_token_major_layout(monkeypatch):
    received: dict[str, object] = {}

    def sageattn(query, key, value, **options):
        received.update(key=key.clone(), options=options)
        return torch.ones_like(query)

    monkeypatch.setitem(sys.modules, "sageattention", types.SimpleNamespace(sageattn=sageattn))
    query, value = torch.randn(1, 10, 2, 16), torch.randn(1, 10, 2, 16)
    key = torch.randn(1, 10, 2, 16) + 3.0
    original = key.clone()
    out = torch.ops.infinitetalk.sage_attention(query, key, value)
    assert torch.equal(out, torch.ones_like(query))
    assert torch.equal(key, original)  # the caller's K is untouched
    torch.testing.assert_close(received["key"], original - original.mean(dim=1, keepdim=True))
    assert received["options"] == {"tensor_layout": "NHD", "is_causal": False, "smooth_k": False}


def test_sage_op_has_a_shape_for_tracing_without_running_it():
    with FakeTensorMode():
        query = torch.empty(2, 42525, 40, 128, dtype=torch.bfloat16)
        out = torch.ops.infinitetalk.sage_attention(query, query, query)
    assert out.shape == query.shape and out.dtype == torch.bfloat16


def test_fa4_op_runs_non_causal_attention_in_the_token_major_layout(monkeypatch):
    received: dict[str, object] = {}

    def flash_attn_func(query, key, value, **options):
        received.update(shapes=(query.shape, key.shape, value.shape), options=options)
        out = torch.nn.functional.scaled_dot_product_attention(
            *(t.transpose(1, 2) for t in (query, key, value))
        )
        return out.transpose(1, 2), None  # FlashAttention-4 answers (out, lse)

    cute = types.SimpleNamespace(flash_attn_func=flash_attn_func)
    monkeypatch.setitem(sys.modules, "flash_attn", types.SimpleNamespace(cute=cute))
    monkeypatch.setitem(sys.modules, "flash_attn.cute", cute)
    query, key, value = (torch.randn(1, 10, 2, 16) for _ in range(3))
    out = attend(query, key, value, AttentionKernel.FA4)
    assert received == {"shapes": (query.shape, key.shape, value.shape), "options": {"causal": False}}
    reference = torch.softmax(torch.einsum("bqhd,bkhd->bhqk", query, key) / 4.0, dim=-1)
    torch.testing.assert_close(out, torch.einsum("bhqk,bkhd->bqhd", reference, value))


def test_fa4_op_has_a_shape_for_tracing_without_running_it():
    with FakeTensorMode():
        query = torch.empty(2, 42525, 40, 128, dtype=torch.bfloat16)
        out = torch.ops.infinitetalk.flash_attention_4(query, query, query)
    assert out.shape == query.shape and out.dtype == torch.bfloat16
