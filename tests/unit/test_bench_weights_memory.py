"""The weight-memory benchmark's counts agree with real modules and with torchao's fp8 layout."""

from __future__ import annotations

import json

import pytest
import torch
from tensor_bytes import weight_bytes

from bench.weights_memory import bf16_bytes, components_on_meta, fp8_bytes, main
from pipeline.presets import TINY
from pipeline.quantization import quantize_transformer
from pipeline.weights.dit import build_transformer


def test_meta_counts_match_the_built_modules():
    built = build_transformer(dict(TINY.transformer), TINY.random_seed, device="cpu", dtype=torch.bfloat16)
    counted = components_on_meta(TINY)["dit"]
    assert sum(p.numel() for p in counted.parameters()) == sum(p.numel() for p in built.parameters())
    assert weight_bytes(built) == bf16_bytes(counted)  # fp32 norms and modulation tables included


def test_counted_fp8_bytes_are_what_torchao_stores():
    pytest.importorskip("torchao")
    model = build_transformer(dict(TINY.transformer), TINY.random_seed, device="cpu", dtype=torch.bfloat16)
    quantize_transformer(model, "weights")
    assert weight_bytes(model) == fp8_bytes(components_on_meta(TINY)["dit"])


def test_run_writes_the_replica_budget(tmp_path, capsys):
    assert main(["--preset", "tiny", "--results", str(tmp_path)]) == 0
    (path,) = tmp_path.glob("weights_memory-*.json")
    figures = json.loads(path.read_text())["figures"]
    replica = figures["sampler_replica_gib"]
    assert replica["fp8_dit"] < replica["bf16"]
    assert replica["bf16"] == pytest.approx(
        sum(gib for name, gib in figures["bf16_gib"].items() if "AudioEncoder" not in name)
    )
    assert "two replicas per 80 GB GPU" in capsys.readouterr().out
