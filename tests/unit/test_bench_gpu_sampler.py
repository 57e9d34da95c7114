"""The GPU sampler benchmark's FLOP count and its CPU smoke mode (the GPU figures come from running it)."""

from __future__ import annotations

import json

import pytest
import torch

from bench.activation_memory import counted_pass_gib
from bench.gpu_sampler import MODEL_MD_TFLOP, count_pass_flops, counted_peak_gib, main, vae_layout
from pipeline.presets import INFINITETALK_14B, TINY
from pipeline.warmup import pass_inputs
from pipeline.weights.dit import build_transformer
from pipeline.weights.vae import build_vae


@pytest.mark.parametrize("size", sorted(MODEL_MD_TFLOP))
def test_counted_flops_of_the_14b_pass_match_model_md(size: str) -> None:
    width, height = (int(side) for side in size.split("x"))
    counted = count_pass_flops(dict(INFINITETALK_14B.transformer), width, height) / 1e12
    # Counted 1825 / 2708 / 6860 TFLOP against MODEL.md's 1846 / 2743 / 6971 (480x832, 720x720, 1280x720).
    # Attention is in the count (SDPA on the meta device decomposes into bmm); the 1-2 % gap is MODEL.md
    # rounding its estimate up: its own itemised terms at 720x720 sum to about 2676.
    assert counted == pytest.approx(MODEL_MD_TFLOP[size], rel=0.02)


def test_cpu_smoke_run_writes_a_result(tmp_path, capsys) -> None:
    argv = ["--preset", "tiny", "--device", "cpu", "--sizes", "64x64", "--passes", "1"]
    backends = ["--backends", "native,xformers", "--fp8", "weights"]
    assert main([*argv, *backends, "--skip-job", "--results", str(tmp_path)]) == 0
    (path,) = tmp_path.glob("gpu_sampler-*.json")
    figures = json.loads(path.read_text())["figures"]
    native, xformers, fp8 = figures["passes"]
    assert native["backend"] == "native" and native["seconds_per_pass"] > 0 and native["flops"] > 0
    assert "error" in xformers or xformers["seconds_per_pass"] > 0  # skipped with a reason where absent
    assert fp8["variant"] == "fp8 weights" and fp8["seconds_per_pass"] > 0
    assert 0 < fp8["relative_difference"] < 0.05  # quantised, and still close to the unquantised pass
    whole, tiled, channels_last, fp32 = figures["vae_decode"]
    assert [row["how"] for row in figures["vae_decode"]] == ["whole", "tiled", "channels-last", "fp32"]
    assert fp32["max_abs_difference"] == 0  # the CPU run is fp32 already
    assert whole["seconds_per_chunk"] > 0 and whole["max_abs_difference"] == 0
    assert tiled["max_abs_difference"] == 0  # 64x64 is below diffusers' tile size: the same decode
    assert channels_last["max_abs_difference"] < 1e-5  # a layout, not a different computation
    assert "native" in capsys.readouterr().out


def test_chunked_then_fused_then_compiled_blocks_give_the_eager_output(tmp_path) -> None:
    argv = ["--preset", "tiny", "--device", "cpu", "--sizes", "64x64", "--passes", "1"]
    options = ["--token-chunk", "112", "--fuse-qkv", "--compile", "--backends", "native", "--skip-vae"]
    options.append("--skip-job")
    assert main([*argv, *options, "--results", str(tmp_path)]) == 0
    (path,) = tmp_path.glob("gpu_sampler-*.json")
    eager, chunked, fused, compiled = json.loads(path.read_text())["figures"]["passes"]
    assert eager["backend"] == "native"
    assert chunked["variant"] == "token chunk 112" and chunked["relative_difference"] < 1e-5
    assert fused["variant"] == "fused QKV" and fused["relative_difference"] < 1e-5
    assert compiled["variant"] == "compiled" and compiled["first_call_seconds"] > compiled["seconds_per_pass"]
    assert compiled["relative_difference"] < 1e-4


def test_qkv_fusion_reaches_the_wan_attention_of_every_block() -> None:
    model = build_transformer(dict(TINY.transformer), TINY.random_seed)
    model.fuse_qkv_projections()
    assert all(block.attn1.fused_projections and block.attn2.fused_projections for block in model.blocks)
    assert not any(block.audio_cross_attn.fused_projections for block in model.blocks)  # kv already fused


def test_the_counted_peak_is_what_the_gpu_holds_before_the_pass_plus_the_counted_activations(monkeypatch):
    model = build_transformer(dict(TINY.transformer), TINY.random_seed)
    model.set_token_chunk(50)
    inputs = pass_inputs(dict(TINY.transformer), 96, 64, "cpu", torch.float32)
    assert (
        counted_peak_gib(model, inputs, torch.device("cpu")) is None
    )  # nothing to compare against off a GPU
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 3 * 2**30)
    counted = counted_peak_gib(model, inputs, torch.device("cuda"))
    assert counted == 3 + counted_pass_gib(dict(TINY.transformer), "96x64", 50)
    assert counted_pass_gib(dict(TINY.transformer), "96x64", 50) > 0


def test_vae_layouts_apply_and_are_undone() -> None:
    vae = build_vae(TINY.vae, TINY.random_seed)
    conv = next(module for module in vae.model.modules() if isinstance(module, torch.nn.Conv3d))
    with vae_layout(vae, "channels-last"):
        assert conv.weight.is_contiguous(memory_format=torch.channels_last_3d)
        assert not conv.weight.is_contiguous()
    with vae_layout(vae, "tiled"):
        assert vae.model.use_tiling
    vae.model.to(torch.bfloat16)
    with vae_layout(vae, "fp32"):
        assert vae.dtype == torch.float32
    assert vae.dtype == torch.bfloat16
    assert conv.weight.is_contiguous() and not vae.model.use_tiling


def test_a_lean_job_with_guidance_runs_end_to_end_on_its_options(tmp_path) -> None:
    argv = ["--preset", "tiny", "--device", "cpu", "--skip-passes", "--skip-vae", "--job-lean"]
    job = ["--job-size", "128x128", "--job-frames", "81", "--job-cfg", "1.5", "--results", str(tmp_path)]
    assert main([*argv, *job]) == 0
    (path,) = tmp_path.glob("gpu_sampler-*.json")
    figures = json.loads(path.read_text())["figures"]["job"]
    assert figures["job"] == {"size": "128x128", "frames": 81, "cfg": 1.5}
    assert figures["options"]["fp8"] == "weights" and figures["options"]["token_chunk"] == "4096"
    assert figures["options"]["vae_tiling"] == "on"
    assert figures["options"]["guidance"] == "one pass at a time when cfg ≠ 1"
    assert figures["seconds"] > 0 and "over_dit_limit" not in figures  # the DiT limit is the seed job's
