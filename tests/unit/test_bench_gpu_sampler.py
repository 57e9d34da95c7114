"""The GPU sampler benchmark's FLOP count and its CPU smoke mode (the GPU figures come from running it)."""

from __future__ import annotations

import json

import pytest

from bench.gpu_sampler import MODEL_MD_TFLOP, count_pass_flops, main
from pipeline.presets import INFINITETALK_14B


def test_counted_flops_of_the_14b_pass_match_model_md() -> None:
    counted = count_pass_flops(dict(INFINITETALK_14B.transformer), 720, 720) / 1e12
    # Counted 2708 TFLOP against MODEL.md's 2743 (1825 vs 1846 at 480x832, 6860 vs 6971 at 1280x720): the
    # counter sees matmuls and convolutions only; MODEL.md does not itemise its estimate. 1-2 % below it.
    assert counted == pytest.approx(MODEL_MD_TFLOP["720x720"], rel=0.02)


def test_cpu_smoke_run_writes_a_result(tmp_path, capsys) -> None:
    argv = ["--preset", "tiny", "--device", "cpu", "--sizes", "64x64", "--passes", "1"]
    assert main([*argv, "--backends", "native,xformers", "--skip-job", "--results", str(tmp_path)]) == 0
    (path,) = tmp_path.glob("gpu_sampler-*.json")
    figures = json.loads(path.read_text())["figures"]
    native, xformers = figures["passes"]
    assert native["backend"] == "native" and native["seconds_per_pass"] > 0 and native["flops"] > 0
    assert "error" in xformers or xformers["seconds_per_pass"] > 0  # skipped with a reason where absent
    assert figures["vae_decode"][0]["seconds_per_chunk"] > 0
    assert "native" in capsys.readouterr().out
