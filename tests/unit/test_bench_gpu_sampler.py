"""The GPU benchmark: its FLOP count, its choices, and its whole run on the CPU (the dry run of the device
script; the figures come from running it on a GPU)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench.gpu_sampler import (
    MODEL_MD_TFLOP,
    PASS_DISTANCE_BOUND,
    choose_fp8,
    choose_kernel,
    count_pass_flops,
    main,
)
from bench.jobs import psnr_db
from pipeline.models.attention_kernels import AttentionKernel
from pipeline.presets import INFINITETALK_14B, Fp8Mode

TINY_RUN = ["--preset", "tiny", "--device", "cpu", "--size", "64x64", "--job-frames", "81", "--passes", "1"]


@pytest.mark.parametrize("size", sorted(MODEL_MD_TFLOP))
def test_counted_flops_of_the_14b_pass_match_model_md(size: str) -> None:
    width, height = (int(side) for side in size.split("x"))
    counted = count_pass_flops(dict(INFINITETALK_14B.transformer), width, height) / 1e12
    # Counted 1825 / 2708 / 6860 TFLOP against MODEL.md's 1846 / 2743 / 6971 (480x832, 720x720, 1280x720).
    # Attention is in the count (SDPA on the meta device decomposes into bmm); the 1-2 % gap is MODEL.md
    # rounding its estimate up: its own itemised terms at 720x720 sum to about 2676.
    assert counted == pytest.approx(MODEL_MD_TFLOP[size], rel=0.02)


def _row(kernel: str, seconds: float, distance: float) -> dict:
    return {"kernel": kernel, "seconds_per_pass": seconds, "relative_distance": distance}


def test_the_kernel_is_the_fastest_within_the_accuracy_bound():
    rows = [
        _row("sdpa", 5.2, 0.0),
        _row("sdpa-cudnn", 5.1, 0.001),
        _row("sage", 3.0, PASS_DISTANCE_BOUND * 2),  # fastest, but moves the output too far
        {"kernel": "sdpa-flash", "error": "not usable"},
    ]
    assert choose_kernel(rows) is AttentionKernel.SDPA_CUDNN


def test_fp8_is_the_closest_mode_of_those_about_as_fast_as_the_fastest():
    gemms = [
        {"fp8": "off", "milliseconds": 20.0},
        {"fp8": "dynamic", "milliseconds": 10.2},
        {"fp8": "dynamic-tensorwise", "milliseconds": 10.0},
    ]
    rows = [
        {"fp8": "dynamic", "relative_distance": 0.040},
        {"fp8": "dynamic-tensorwise", "relative_distance": 0.045},
    ]
    assert choose_fp8(rows, gemms) is Fp8Mode.DYNAMIC  # within 3 % of the fastest, and closer
    gemms[1]["milliseconds"] = 12.2  # were per-row 20 % slower (the H200 measured it 11 % faster)...
    assert choose_fp8(rows, gemms) is Fp8Mode.DYNAMIC_TENSORWISE  # ...tensorwise would win on speed
    rows[1]["relative_distance"] = PASS_DISTANCE_BOUND * 1.1
    assert choose_fp8(rows, gemms) is Fp8Mode.DYNAMIC  # a mode past the bound is never chosen
    gemms[1]["milliseconds"] = 25.0
    assert choose_fp8(rows, gemms) is Fp8Mode.OFF  # nor one no faster than bf16
    assert choose_fp8([{"fp8": "dynamic", "error": "no GPU"}], gemms) is Fp8Mode.OFF


def test_psnr_of_frames():
    reference = np.full((2, 4, 4, 3), 100, dtype=np.uint8)
    assert psnr_db(reference, reference) == float("inf")
    off_by_one = reference + 1
    assert psnr_db(off_by_one, reference) == pytest.approx(20 * np.log10(255.0))


def _figures(results: Path, *options: str) -> dict:
    """The figures of one tiny CPU run of the benchmark with ``options``."""
    assert main([*TINY_RUN, *options, "--results", str(results)]) == 0
    (path,) = results.glob("gpu_sampler-2*.json")
    return json.loads(path.read_text())["figures"]


@pytest.mark.slow
def test_the_whole_run_on_the_cpu_writes_every_phase(tmp_path, capsys):
    figures = _figures(tmp_path, "--fp8", "weights,dynamic")
    assert json.loads((tmp_path / "gpu_sampler-partial.json").read_text())["figures"] == figures
    rows = {row["variant"]: row for row in figures["passes"]}
    reference = rows["eager float32, sdpa"]
    assert reference["relative_distance"] == 0 and reference["seconds_per_pass"] > 0
    assert "runs on CUDA GPUs" in rows["eager float32, sage"]["error"]  # each kernel: a row, timed or why not
    assert "runs on CUDA GPUs" in rows["eager float32, fa4"]["error"]
    assert 0 < rows["eager fp8 weights, sdpa"]["relative_distance"] < PASS_DISTANCE_BOUND
    assert "GPU" in rows["eager fp8 dynamic, sdpa"]["error"]
    assert (
        rows["eager, sdpa, token chunk 4096"]["relative_distance"] < 1e-5
    )  # chunking is the same arithmetic
    assert figures["chosen_kernel"] == "sdpa" and figures["chosen_fp8"] in ("off", "weights")
    compiled = next(row for variant, row in rows.items() if variant.startswith("compiled"))
    assert compiled["first_call_seconds"] > compiled["seconds_per_pass"] > 0
    assert figures["reference_job"]["seconds"] > 0 and "sampling" in figures["reference_job"]["stages"]
    replicas = figures["replicas"]
    assert "error" not in replicas, replicas
    assert replicas["solo"]["psnr_db_vs_reference"] > 30  # the same model and seed, compiled
    assert len(replicas["shared"]["jobs"]) == 2 and replicas["jobs_per_hour_shared"] > 0
    assert "replicas sharing the device" in capsys.readouterr().out


@pytest.mark.slow
def test_the_fast_job_alone(tmp_path):
    figures = _figures(tmp_path, "--fast-fp8", "weights", "--fast-job-only")
    assert figures["fast_path"]["warmup_seconds"] and figures["passes"][0]["seconds_per_pass"] > 0
    assert figures["fast_path"]["compiled"] == "yes" and figures["fast_path"]["attention"] == "sdpa"
    assert figures["fast_job"]["seconds"] > 0


@pytest.mark.slow
def test_the_jobs_alone_give_the_psnr_and_the_shared_device(tmp_path):
    figures = _figures(tmp_path, "--fast-fp8", "weights", "--jobs-only")
    assert "passes" not in figures and figures["reference_job"]["seconds"] > 0
    replicas = figures["replicas"]
    assert "error" not in replicas, replicas
    assert replicas["spec"]["fp8"] == "weights" and replicas["spec"]["attention"] == "sdpa"
    assert replicas["solo"]["psnr_db_vs_reference"] > 20  # fp8 weights against the fp32 eager job
    assert replicas["shared_over_one"] > 0
