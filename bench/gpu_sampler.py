"""The GPU benchmark: every figure of the sampler's fast path in one run that fits one device call.

Phases, in order, each printing its progress and rewriting ``gpu_sampler-partial.json`` in the results
directory as it ends, so a run stopped at its time limit still leaves what it measured:

1. **passes**: the 14B DiT (random weights, built on the GPU in bf16) at ``--size`` (one 81-frame chunk),
   one pass per self-attention kernel: seconds, TFLOP/s (FLOPs counted on the meta device), peak memory, and
   the relative L2 distance of its output from the ``sdpa`` pass (the reference). The self-attention alone is
   timed too, per kernel, and the chosen kernel once more on token-chunked blocks (``model.token_chunk``).
2. **reference job**: the seed's default job (720x720, 125 frames, 7 steps, shift 11, cfg 1) end to end on
   the eager bf16 model with ``sdpa``; its frames are what the fast jobs are compared with (PSNR).
3. **fp8**: per ``--fp8`` mode, the DiT quantised (torchao) and one eager pass (distance from the reference),
   and three of a block's GEMM shapes compiled in bf16 and in each mode (the matmul speed each mode reaches
   once its quantisation is fused).
4. **compiled**: the fast path (``torch.compile`` d blocks, the chosen fp8 mode, the fastest kernel within
   the accuracy bound): first-call (compile) seconds, seconds per pass, distance. With time left, compiled
   bf16 with that kernel too.
5. **replicas** (``bench.replicas``): the in-process models are let go and ``--replicas`` worker processes
   each build a sampler on the fast path and warm it up, as a ``num_gpus: 0.5`` replica does. Worker 0 runs
   the seed job alone (the fast job: stage timings, peak memory, PSNR against the reference), then all run
   one job each at once: jobs per hour of the replicas sharing the GPU against one running jobs back to back.

    python -m bench.gpu_sampler                                       # on an H100/H200, ~8 minutes
    python -m bench.gpu_sampler --preset tiny --device cpu --size 64x64 --job-frames 81 --fp8 weights
                                                                      # the CPU dry run (a unit test)
    python -m bench.gpu_sampler --fast-job-only                       # the fast path's compile, pass, job
    python -m bench.gpu_sampler --jobs-only                           # phases 2 and 5 alone (~6 minutes)

Every optional phase checks the clock first and is skipped, with a note in the result, when it would crowd
out the replicas before ``--deadline-seconds``: the first run on an H200 (2026-12-04) compiled with
Inductor's tuning on, spent 185 s on one compile and ran out of time before the replicas.
``bench/device/gpu_bench.sh`` runs it on a lent GPU machine that has only PyTorch, with the other packages
carried as wheels.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.jobs import peak_gib, reset_peak, run_job, seed_request
from bench.replicas import run_replicas
from bench.report import bench_parser, table, write_result
from pipeline.compilation import compile_transformer
from pipeline.components import apply_options, random_components
from pipeline.models.attention_kernels import AttentionKernel, attend, resolve_kernel, unusable_reason
from pipeline.models.transformer import InfiniteTalkTransformer3DModel
from pipeline.pipeline import synchronize
from pipeline.presets import Fp8Mode, Preset, get_preset
from pipeline.quantization import quantize_transformer
from pipeline.sizes import parse_size
from pipeline.warmup import pass_inputs, warm_up
from pipeline.weights.dit import build_transformer

# MODEL.md §9: TFLOP per pass of the 14B model for one 81-frame chunk (the counts here are 1-2 % under).
MODEL_MD_TFLOP = {"720x720": 2743.0, "1280x720": 6971.0, "480x832": 1846.0}
# The bf16 matmul rate of the lent H200 (8192³ products, 769-798 TFLOP/s in the device tool's own
# measurements): what "% of peak" is taken against. An H100 SXM has the same matmul units.
BF16_MATMUL_TFLOPS = 790.0
# Accuracy bounds a fast option must meet to be on by default (docs/architecture.md, "Fast path"): the
# output of one pass within 5 % (relative L2) of the bf16 eager pass, and a whole job's frames within
# 30 dB PSNR of the bf16 eager job's.
PASS_DISTANCE_BOUND = 0.05
JOB_PSNR_BOUND_DB = 30.0
TARGET_PASS_SECONDS = 3.0
TARGET_JOB_SECONDS = 45.0
# Not sdpa-flash by default: the slowest on the H200 (6.80 s a pass against 5.21 s); --kernels adds it.
KERNELS = (AttentionKernel.SDPA, AttentionKernel.SDPA_CUDNN, AttentionKernel.SAGE, AttentionKernel.FA4)
CHUNKED_TOKENS = 4096  # the token chunk of the memory plan (README, "Performance")
# Seconds later phases need at least (H200, 720x720, the seed job): optional work that would crowd them
# out is skipped instead.
REPLICAS_SECONDS = 240.0
COMPILED_VARIANT_SECONDS = 45.0


class Run:
    """The clock, the progress lines and the partial result of one benchmark run."""

    def __init__(self, results: Path, deadline_seconds: float) -> None:
        self.started = time.monotonic()
        self.deadline = self.started + deadline_seconds
        self.results = results
        self.figures: dict[str, Any] = {"skipped": {}}
        results.mkdir(parents=True, exist_ok=True)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def say(self, message: str) -> None:
        print(f"[{self.elapsed():6.1f}s] {message}", file=sys.stderr, flush=True)

    def fits(self, phase: str, seconds: float) -> bool:
        """Whether ``seconds`` more fit before the deadline; records a skip when not."""
        left = self.deadline - time.monotonic()
        if seconds <= left:
            return True
        self.figures["skipped"][phase] = f"needs ~{seconds:.0f} s, {left:.0f} s left"
        self.say(f"skipping {phase}: {self.figures['skipped'][phase]}")
        return False

    def attempt(self, phase: str, body: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``body(*args, **kwargs)``, or None with the error recorded: a phase failing must not cost the
        phases after it."""
        try:
            return body(*args, **kwargs)
        except Exception as error:
            self.figures.setdefault("errors", {})[phase] = f"{type(error).__name__}: {error}"[:1000]
            self.say(f"{phase} failed: {self.figures['errors'][phase]}")
            traceback.print_exc()
            self.save_partial()
            return None

    def save_partial(self) -> None:
        document = {"elapsed_seconds": self.elapsed(), "figures": self.figures}
        (self.results / "gpu_sampler-partial.json").write_text(json.dumps(document, indent=2) + "\n")


def count_pass_flops(config: dict[str, Any], width: int, height: int) -> int:
    """FLOPs of one forward, counted on the meta device (no weights, no memory)."""
    with torch.device("meta"):
        model = InfiniteTalkTransformer3DModel(**config).eval().requires_grad_(False)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(**pass_inputs(config, width, height, "meta", torch.float32))
    return counter.get_total_flops()


def relative_distance(output: torch.Tensor, reference: torch.Tensor) -> float:
    return ((output.float() - reference.float()).norm() / reference.float().norm()).item()


def time_passes(
    call: Callable[[], torch.Tensor], device: torch.device, passes: int
) -> tuple[list[float], torch.Tensor]:
    """Seconds of ``passes`` calls after one untimed call, and the untimed call's output."""
    with torch.inference_mode():
        output = call()
        synchronize(device)
        seconds = []
        for _ in range(passes):
            started = time.perf_counter()
            call()
            synchronize(device)
            seconds.append(time.perf_counter() - started)
    return seconds, output


def pass_row(label: str, seconds: list[float], flops: int, device: torch.device) -> dict[str, Any]:
    median = statistics.median(seconds)
    return {
        "variant": label,
        "seconds_per_pass": median,
        "all_seconds": seconds,
        "tflops": flops / median / 1e12,
        "peak_gib": peak_gib(device),
    }


def _failure(error: Exception) -> str:
    return f"{type(error).__name__}: {error}"[:300]


@dataclass
class Setting:
    """What every phase of one run works on."""

    run: Run
    device: torch.device
    dtype: torch.dtype
    preset: Preset
    size: str
    passes: int
    scratch: Path

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.preset.transformer)

    def build_dit(self) -> InfiniteTalkTransformer3DModel:
        return build_transformer(self.config, self.preset.random_seed, device=self.device, dtype=self.dtype)


@dataclass
class Reference:
    """The eager bf16 ``sdpa`` pass every variant is compared with, and what it ran on."""

    inputs: dict[str, torch.Tensor]
    output: torch.Tensor
    flops: int
    tokens: int


def bench_eager_kernels(
    setting: Setting,
    model: InfiniteTalkTransformer3DModel,
    inputs: dict[str, torch.Tensor],
    flops: int,
    kernels: list[AttentionKernel],
) -> tuple[list[dict[str, Any]], torch.Tensor]:
    """One row per kernel; the reference (``sdpa``) first, with one more timed pass than the others."""
    run, device = setting.run, setting.device
    rows: list[dict[str, Any]] = []
    reference: torch.Tensor | None = None
    head_dim = model.config.attention_head_dim
    precision = str(setting.dtype).removeprefix("torch.")
    for kernel in [AttentionKernel.SDPA, *(k for k in kernels if k is not AttentionKernel.SDPA)]:
        label = f"eager {precision}, {kernel.value}"
        reason = unusable_reason(kernel, device, setting.dtype, head_dim)
        if reason is not None:
            rows.append({"variant": label, "kernel": kernel.value, "error": reason})
            run.say(f"{label}: not usable here ({reason})")
            continue
        try:
            model.set_attention_kernel(kernel)
            reset_peak(device)
            timed = setting.passes if reference is None else max(1, setting.passes - 1)
            seconds, output = time_passes(partial(model, **inputs), device, timed)
        except Exception as error:  # one kernel failing must not end the run
            rows.append({"variant": label, "kernel": kernel.value, "error": _failure(error)})
            run.say(f"{label}: failed ({rows[-1]['error']})")
            continue
        row = pass_row(label, seconds, flops, device) | {"kernel": kernel.value}
        if reference is None:
            reference = output.float()
        row["relative_distance"] = relative_distance(output, reference)
        rows.append(row)
        run.say(f"{label}: {row['seconds_per_pass']:.3f} s/pass, moved {row['relative_distance']:.4f}")
    model.set_attention_kernel(AttentionKernel.SDPA)
    if reference is None:
        raise RuntimeError("the reference pass (sdpa) failed")
    return rows, reference


def bench_attention_alone(
    setting: Setting, tokens: int, kernels: list[AttentionKernel]
) -> list[dict[str, Any]]:
    """The self-attention of one block alone, per kernel: milliseconds per call (median of 5 after 1)."""
    heads, head_dim = setting.config["num_attention_heads"], setting.config["attention_head_dim"]
    device, dtype = setting.device, setting.dtype
    query, key, value = (torch.randn(1, tokens, heads, head_dim, device=device, dtype=dtype) for _ in "qkv")
    flops = 4 * tokens * tokens * heads * head_dim
    rows = []
    for kernel in kernels:
        if unusable_reason(kernel, device, dtype, head_dim) is not None:
            continue
        if kernel is AttentionKernel.SDPA:
            head_major = [tensor.transpose(1, 2) for tensor in (query, key, value)]
            call = partial(torch.nn.functional.scaled_dot_product_attention, *head_major)
        else:
            call = partial(attend, query, key, value, kernel)
        try:
            seconds, _ = time_passes(call, device, 5)
        except Exception as error:
            rows.append({"kernel": kernel.value, "error": _failure(error)})
            continue
        median = statistics.median(seconds)
        rows.append({"kernel": kernel.value, "milliseconds": median * 1e3, "tflops": flops / median / 1e12})
    return rows


def bench_gemms(setting: Setting, tokens: int, modes: list[Fp8Mode]) -> list[dict[str, Any]]:
    """Three of a block's GEMM shapes (d x d as its projections, the FFN's d x ffn and ffn x d) at
    ``tokens`` rows, compiled, in bf16 and in each fp8 mode: how fast each mode's matmuls run once its
    activation quantisation is fused, which eager fp8 passes do not show. One compiled module per mode."""
    config, device, dtype = setting.config, setting.device, setting.dtype
    dim = config["num_attention_heads"] * config["attention_head_dim"]
    shapes = [(dim, dim), (dim, config["ffn_dim"]), (config["ffn_dim"], dim)]
    flops = sum(2 * tokens * inner * outer for inner, outer in shapes)
    activations = [torch.randn(tokens, inner, device=device, dtype=dtype) for inner, _ in shapes]
    rows = []
    for mode in [Fp8Mode.OFF, *modes]:
        gemms = _Gemms([torch.nn.Linear(i, o, device=device, dtype=dtype) for i, o in shapes])
        try:
            quantize_transformer(gemms, mode)
            compiled = torch.compile(gemms, fullgraph=True, dynamic=False)
            seconds, _ = time_passes(partial(compiled, activations), device, 10)
        except Exception as error:  # a mode this device lacks must not end the run
            rows.append({"fp8": mode.value, "error": _failure(error)})
            continue
        median = statistics.median(seconds)
        rows.append({"fp8": mode.value, "milliseconds": median * 1e3, "tflops": flops / median / 1e12})
    return rows


class _Gemms(torch.nn.Module):
    """Linear layers under ``blocks.``, so ``quantize_transformer``'s filter takes them as in the DiT."""

    def __init__(self, layers: list[torch.nn.Linear]) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList(layers)

    def forward(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        return [layer(x) for layer, x in zip(self.blocks, inputs, strict=True)]


def choose_kernel(rows: list[dict[str, Any]]) -> AttentionKernel:
    """The fastest eager kernel within ``PASS_DISTANCE_BOUND``."""
    usable = [row for row in rows if "error" not in row and row["relative_distance"] <= PASS_DISTANCE_BOUND]
    return AttentionKernel(min(usable, key=lambda row: row["seconds_per_pass"])["kernel"])


def choose_fp8(rows: list[dict[str, Any]], gemms: list[dict[str, Any]]) -> Fp8Mode:
    """Among the modes within ``PASS_DISTANCE_BOUND``, the closest of those within 3 % of the fastest
    compiled GEMMs; ``off`` when none is within the bound or none beats bf16's GEMMs."""
    speed = {row["fp8"]: row["milliseconds"] for row in gemms if "error" not in row}
    within = [
        row
        for row in rows
        if "error" not in row
        and row["relative_distance"] <= PASS_DISTANCE_BOUND
        and speed.get(row["fp8"], float("inf")) < speed.get(Fp8Mode.OFF.value, float("inf"))
    ]
    if not within:
        return Fp8Mode.OFF
    fastest = min(speed[row["fp8"]] for row in within)
    close_enough = [row for row in within if speed[row["fp8"]] <= 1.03 * fastest]
    return Fp8Mode(min(close_enough, key=lambda row: row["relative_distance"])["fp8"])


def phase_passes(
    setting: Setting, model: InfiniteTalkTransformer3DModel, kernels: list[AttentionKernel]
) -> tuple[Reference, AttentionKernel]:
    run = setting.run
    width, height = parse_size(setting.size)
    flops = count_pass_flops(setting.config, width, height)
    run.figures["pass_tflop"] = flops / 1e12
    run.say(f"one pass at {setting.size}: {flops / 1e12:.0f} TFLOP counted")
    inputs = pass_inputs(setting.config, width, height, setting.device, setting.dtype)
    run.figures["passes"], output = bench_eager_kernels(setting, model, inputs, flops, kernels)
    _, patch_height, patch_width = setting.config["patch_size"]
    frames, latent_height, latent_width = inputs["hidden_states"].shape[2:]
    tokens = frames * (latent_height // patch_height) * (latent_width // patch_width)
    reference = Reference(inputs, output, flops, tokens)
    run.figures["attention_alone"] = bench_attention_alone(setting, tokens, kernels)
    kernel = choose_kernel(run.figures["passes"])
    run.figures["chosen_kernel"] = kernel.value
    run.say(f"fastest kernel within {PASS_DISTANCE_BOUND}: {kernel.value}")
    run.attempt("chunked pass", _chunked_pass, setting, model, reference, kernel)
    run.save_partial()
    return reference, kernel


def _chunked_pass(
    setting: Setting, model: InfiniteTalkTransformer3DModel, reference: Reference, kernel: AttentionKernel
) -> None:
    """The chosen kernel on token-chunked blocks, whose Q, K and V are views of one stacked tensor."""
    label = f"eager, {kernel.value}, token chunk {CHUNKED_TOKENS}"
    model.set_token_chunk(CHUNKED_TOKENS)
    model.set_attention_kernel(kernel)
    try:
        reset_peak(setting.device)
        seconds, output = time_passes(partial(model, **reference.inputs), setting.device, 1)
    finally:
        model.set_token_chunk(None)
        model.set_attention_kernel(AttentionKernel.SDPA)
    row = pass_row(label, seconds, reference.flops, setting.device) | {"kernel": kernel.value}
    row["relative_distance"] = relative_distance(output, reference.output)
    setting.run.figures["passes"].append(row)
    setting.run.say(f"{label}: {row['seconds_per_pass']:.3f} s/pass, moved {row['relative_distance']:.4f}")


def phase_reference_job(setting: Setting, model: InfiniteTalkTransformer3DModel, frames: int) -> None:
    run = setting.run
    run.say("building umT5, CLIP, the VAE and wav2vec2 on the device")
    components = random_components(setting.preset.name, device=setting.device, dtype=setting.dtype)
    components.transformer = model
    request = seed_request(setting.size, frames)
    figures, reference_frames = run_job(components, request, setting.scratch / "reference.mp4")
    run.figures["reference_job"] = figures
    np.save(setting.scratch / "reference.npy", reference_frames)
    run.say(f"reference job (eager bf16, sdpa): {figures['seconds']:.1f} s")
    run.save_partial()


def phase_fp8(
    setting: Setting, reference: Reference, modes: list[Fp8Mode]
) -> tuple[Fp8Mode, InfiniteTalkTransformer3DModel | None]:
    """Each mode's eager pass and compiled GEMMs; the chosen mode and its quantised DiT (None for off).

    One quantised DiT is alive at a time beside the bf16 one: the chosen mode's is built again at the end.
    """
    run, device = setting.run, setting.device
    rows = []
    for mode in modes:
        label = f"eager fp8 {mode.value}, sdpa"
        try:
            quantized = setting.build_dit()
            quantize_transformer(quantized, mode)
            reset_peak(device)
            seconds, output = time_passes(partial(quantized, **reference.inputs), device, 1)
        except Exception as error:  # a mode this device lacks must not end the run
            rows.append({"variant": label, "fp8": mode.value, "error": _failure(error)})
            run.say(f"{label}: failed ({rows[-1]['error']})")
            continue
        finally:
            quantized = None  # let this DiT go before the next one is built
        row = pass_row(label, seconds, reference.flops, device) | {"fp8": mode.value}
        row["relative_distance"] = relative_distance(output, reference.output)
        rows.append(row)
        run.say(f"{label}: {row['seconds_per_pass']:.3f} s/pass, moved {row['relative_distance']:.4f}")
    run.figures["passes"] += rows
    run.figures["gemms"] = bench_gemms(setting, reference.tokens, modes)
    chosen = choose_fp8(rows, run.figures["gemms"])
    run.figures["chosen_fp8"] = chosen.value
    run.say(f"fp8 mode within {PASS_DISTANCE_BOUND}, fastest on the compiled GEMMs: {chosen.value}")
    run.save_partial()
    if chosen is Fp8Mode.OFF:
        return chosen, None
    model = setting.build_dit()
    quantize_transformer(model, chosen)
    return chosen, model


def phase_compiled(
    setting: Setting,
    reference: Reference,
    variants: list[tuple[str, InfiniteTalkTransformer3DModel]],
    kernel: AttentionKernel,
    tuned: bool,
) -> None:
    """Compile each variant in place with ``kernel``; the first is the fast path, the others run only when
    they leave the replicas their time."""
    run, device = setting.run, setting.device
    for index, (label, model) in enumerate(variants):
        if index and not run.fits(label, COMPILED_VARIANT_SECONDS + REPLICAS_SECONDS):
            continue
        model.set_attention_kernel(kernel)
        compile_transformer(model, tuned=tuned)
        reset_peak(device)
        started = time.perf_counter()
        with torch.inference_mode():
            output = model(**reference.inputs)
        synchronize(device)
        first_call = time.perf_counter() - started
        seconds, _ = time_passes(partial(model, **reference.inputs), device, setting.passes)
        row = pass_row(label, seconds, reference.flops, device)
        row |= {"kernel": kernel.value, "first_call_seconds": first_call, "compile_tuning": tuned}
        row["relative_distance"] = relative_distance(output, reference.output)
        run.figures["passes"].append(row)
        run.say(
            f"{label}: first call {first_call:.0f} s, {row['seconds_per_pass']:.3f} s/pass, "
            f"moved {row['relative_distance']:.4f}"
        )
        run.save_partial()


def fast_job_only(setting: Setting, fp8: Fp8Mode, kernel: AttentionKernel, tuned: bool, frames: int) -> None:
    """The fast path alone, as a replica starts it: its compile (first pass) time, its pass time, its job."""
    run, device = setting.run, setting.device
    run.say(f"building every component on {device}; fp8 {fp8.value}, {kernel.value}, tuned compile {tuned}")
    components = apply_options(
        random_components(setting.preset.name, device=device, dtype=setting.dtype),
        fp8=fp8,
        attention=kernel,
        compile=True,
        compile_tuning=tuned,
    )
    width, height = parse_size(setting.size)
    run.figures["fast_path"] = dict(components.identities)
    run.figures["fast_path"]["warmup_seconds"] = warm_up(components, [(width, height)])
    run.say(f"warm-up (compile): {run.figures['fast_path']['warmup_seconds']}")
    run.save_partial()
    inputs = pass_inputs(setting.config, width, height, device, setting.dtype)
    reset_peak(device)
    seconds, _ = time_passes(partial(components.transformer, **inputs), device, setting.passes)
    flops = count_pass_flops(setting.config, width, height)
    label = f"compiled fp8 {fp8.value}, {components.identities['attention']}"
    run.figures["passes"] = [pass_row(label, seconds, flops, device)]
    run.say(f"{statistics.median(seconds):.3f} s/pass")
    run.save_partial()
    if run.fits("fast job", 75.0):
        request = seed_request(setting.size, frames)
        run.figures["fast_job"], _ = run_job(components, request, setting.scratch / "fast.mp4")
        run.say(f"fast job: {run.figures['fast_job']}")
        run.save_partial()


def full_run(setting: Setting, args: argparse.Namespace) -> None:
    run = setting.run
    run.say(f"building the DiT ({setting.preset.name}) on {setting.device} in {setting.dtype}")
    model = setting.build_dit()
    kernels = [AttentionKernel(name.strip()) for name in args.kernels.split(",") if name.strip()]
    reference, kernel = phase_passes(setting, model, kernels)
    run.attempt("reference job", phase_reference_job, setting, model, args.job_frames)
    fp8_modes = [Fp8Mode(name.strip()) for name in args.fp8.split(",") if name.strip()]
    fp8, quantized = run.attempt("fp8", phase_fp8, setting, reference, fp8_modes) or (Fp8Mode.OFF, None)
    variants = [(f"compiled bf16, {kernel.value}", model)]
    if quantized is not None:
        variants.insert(0, (f"compiled fp8 {fp8.value}, {kernel.value}", quantized))
        if args.no_compiled_bf16:
            variants.pop()
    run.attempt("compiled", phase_compiled, setting, reference, variants, kernel, args.compile_tuning)
    model = quantized = variants = reference = None
    _release_device(setting.device)
    phase_replicas(setting, args, fp8, kernel)


def phase_replicas(setting: Setting, args: argparse.Namespace, fp8: Fp8Mode, kernel: AttentionKernel) -> None:
    run = setting.run
    if run.fits("replicas", REPLICAS_SECONDS):
        spec = {
            "preset": setting.preset.name,
            "device": str(setting.device),
            "size": setting.size,
            "frames": args.job_frames,
            "fp8": fp8.value,
            "attention": kernel.value,
            "compile_tuning": args.compile_tuning,
            "replicas": args.replicas,
        }
        run.figures["replicas"] = run_replicas(setting.scratch, spec, run.deadline, run.say)
        run.save_partial()


def jobs_only(setting: Setting, args: argparse.Namespace, fp8: Fp8Mode, kernel: AttentionKernel) -> None:
    """The figures the first H200 run's time box left out, without the pass phases: the eager bf16 reference
    job, then the replicas (the fast job's PSNR against it; replicas sharing the device against one)."""
    run = setting.run
    run.say(f"building the DiT ({setting.preset.name}) on {setting.device} in {setting.dtype}")
    run.attempt("reference job", phase_reference_job, setting, setting.build_dit(), args.job_frames)
    _release_device(setting.device)
    phase_replicas(setting, args, fp8, kernel)


def _release_device(device: torch.device) -> None:
    """Nothing of the in-process models may stay on the device while the replicas measure it."""
    torch._dynamo.reset()  # its caches hold the compiled models
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser("python -m bench.gpu_sampler", __doc__)
    parser.add_argument("--preset", default="infinitetalk-14b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", default="720x720", help="WxH of the passes and jobs (the seed's default)")
    parser.add_argument("--kernels", default=",".join(k.value for k in KERNELS), help="comma-separated")
    parser.add_argument("--passes", type=int, default=2, help="timed passes per variant (the reference: +1)")
    parser.add_argument("--fp8", default="dynamic,dynamic-tensorwise", help="comma-separated fp8 modes")
    parser.add_argument("--job-frames", type=int, default=125, help="frames of each job (the seed's: 125)")
    parser.add_argument("--replicas", type=int, default=2, help="worker processes sharing the device")
    parser.add_argument("--no-compiled-bf16", action="store_true", help="skip the compiled bf16 row")
    parser.add_argument(
        "--compile-tuning",
        action="store_true",
        help="compile with Inductor's coordinate-descent tuning (185 s instead of 20 s for the first 720x720 "
        "pass on an H200, for passes 2 %% faster)",
    )
    parser.add_argument("--deadline-seconds", type=float, default=540.0, help="skip what would not fit")
    fast = parser.add_argument_group("the fast path alone (--fast-fp8, --fast-kernel)")
    only = fast.add_mutually_exclusive_group()
    only.add_argument("--fast-job-only", action="store_true", help="its compile, pass and seed job")
    only.add_argument(
        "--jobs-only",
        action="store_true",
        help="the eager reference job, then the replicas on the fast path (PSNR, shared vs one)",
    )
    fast.add_argument("--fast-fp8", default=Fp8Mode.DYNAMIC.value, choices=[m.value for m in Fp8Mode])
    fast.add_argument(
        "--fast-kernel", default=AttentionKernel.AUTO.value, choices=[k.value for k in AttentionKernel]
    )
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    run = Run(args.results, args.deadline_seconds)
    with tempfile.TemporaryDirectory(prefix="gpu-sampler-") as scratch:
        setting = Setting(
            run=run,
            device=device,
            dtype=torch.bfloat16 if device.type == "cuda" else torch.float32,
            preset=get_preset(args.preset),
            size=args.size,
            passes=args.passes,
            scratch=Path(scratch),
        )
        run.figures.update(
            preset=setting.preset.name,
            dtype=str(setting.dtype),
            size=args.size,
            job_frames=args.job_frames,
            bounds={"pass_relative_distance": PASS_DISTANCE_BOUND, "job_psnr_db": JOB_PSNR_BOUND_DB},
        )
        head_dim = setting.config["attention_head_dim"]
        if args.fast_job_only:
            kernel = resolve_kernel(args.fast_kernel, device, setting.dtype, head_dim)
            fast_job_only(setting, Fp8Mode(args.fast_fp8), kernel, args.compile_tuning, args.job_frames)
        elif args.jobs_only:
            kernel = resolve_kernel(args.fast_kernel, device, setting.dtype, head_dim)
            jobs_only(setting, args, Fp8Mode(args.fast_fp8), kernel)
        else:
            full_run(setting, args)
    path = write_result("gpu_sampler", run.figures, args.results)
    print(summary(run.figures))
    print(f"result: {path}")
    return 0


def summary(figures: dict[str, Any]) -> str:
    rows = [
        (
            row["variant"],
            row.get("seconds_per_pass"),
            row.get("tflops"),
            100 * row["tflops"] / BF16_MATMUL_TFLOPS if "tflops" in row else None,
            row.get("relative_distance"),
            row.get("peak_gib"),
            row.get("first_call_seconds"),
            row.get("error", "")[:50],
        )
        for row in figures.get("passes", [])
    ]
    headers = ["pass", "s/pass", "TFLOP/s", "% of 790", "distance", "peak GiB", "first call s", "note"]
    targets = f"(targets: {TARGET_PASS_SECONDS} s a pass, {TARGET_JOB_SECONDS:.0f} s a job)"
    lines = [table(headers, rows), targets]
    for name in ("reference_job", "fast_job"):
        job = figures.get(name)
        if job:
            lines.append(f"{name.replace('_', ' ')}: {job['seconds']:.1f} s, peak {job['peak_gib']} GiB")
    replicas = figures.get("replicas", {})
    if "solo" in replicas:
        solo = replicas["solo"]
        lines.append(
            f"fast job (one replica): {solo['seconds']:.1f} s, peak {solo['peak_gib']} GiB, PSNR "
            f"{solo.get('psnr_db_vs_reference')} dB vs the reference job"
        )
    if "shared_over_one" in replicas:
        shared, one = replicas["jobs_per_hour_shared"], replicas["jobs_per_hour_one_replica"]
        lines.append(
            f"{replicas['spec']['replicas']} replicas sharing the device: {shared:.0f} jobs/h vs {one:.0f} "
            f"for one running jobs back to back: {replicas['shared_over_one']:.2f}x"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
