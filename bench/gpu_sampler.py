"""The GPU stage: one denoising pass of the real 14B architecture (random weights), VAE decode per chunk,
and the seed's default job end to end, against the physical limit of MODEL.md §9 (or another job:
``--job-size``, ``--job-frames``, ``--job-cfg``; ``--job-lean`` runs it on the two-replicas-per-GPU plan).

Per size (one 81-frame chunk: 21 latent frames) and attention backend: seconds per pass (median of
``--passes`` after a warm-up), achieved TFLOP/s and its share of the H100's measured bf16 matmul rate
(790 TFLOP/s), peak GPU memory. FLOPs are counted, not estimated: the same forward runs once on the meta
device under ``torch.utils.flop_counter.FlopCounterMode`` (no memory needed), and the count is printed
next to MODEL.md's figure. ``--token-chunk``, ``--fuse-qkv``, ``--compile`` and ``--fp8`` add rows for the
same model token-chunked, with fused projections, compiled, quantised (cumulative, in that order), each with
how far its output moved; ``bench.activation_memory`` counts the peak each should have, for comparison.
The VAE decode is timed whole, spatially tiled, with channels-last weights and in fp32.

    python -m bench.gpu_sampler                                  # on a GPU: all sizes, every backend
    python -m bench.gpu_sampler --preset tiny --device cpu --sizes 64x64 --passes 1 --skip-job  # smoke

On a lent GPU machine a whole run outlasts one device call; ``bench/device/gpu_bench.sh`` runs it in phases.
"""

from __future__ import annotations

import functools
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.activation_memory import counted_pass_gib
from bench.dit_inputs import CHUNK_LATENT_FRAMES, SEED_SIZES, pass_inputs
from bench.report import bench_parser, table, write_result
from pipeline.audio import decode_audio
from pipeline.cli import parse_size, positive_int
from pipeline.components import apply_options, random_components
from pipeline.conditioning import load_image
from pipeline.conditioning.vae import WanVAE
from pipeline.models.transformer import InfiniteTalkTransformer3DModel
from pipeline.pipeline import GenerationRequest, InfiniteTalkPipeline, synchronize
from pipeline.presets import Fp8Mode, get_preset
from pipeline.quantization import quantize_transformer
from pipeline.weights.dit import build_transformer
from pipeline.weights.vae import build_vae

ASSETS = Path(__file__).resolve().parents[1] / "pipeline" / "assets"
# MODEL.md §9: TFLOP per pass of the 14B model for one 81-frame chunk.
MODEL_MD_TFLOP = {"720x720": 2743.0, "1280x720": 6971.0, "480x832": 1846.0}
H100_BF16_TFLOPS = 790.0
# The seed default job (720x720, 125 frames = 2 chunks, 7 steps, cfg 1 = 14 passes) at ≥ 3.47 s per pass.
DIT_LIMIT_SEED_JOB_S = 49.0
# diffusers attention backends worth timing; hub variants (kernel downloads) are left out.
BACKENDS = (
    "native",
    "_native_flash",
    "_native_efficient",
    "_native_cudnn",
    "flex",
    "xformers",
    "flash",
    "_flash_3",
    "sage",
)


def count_pass_flops(config: dict[str, Any], width: int, height: int) -> int:
    """FLOPs of one forward, counted on the meta device (no weights, no memory)."""
    with torch.device("meta"):
        model = InfiniteTalkTransformer3DModel(**config).eval().requires_grad_(False)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(**pass_inputs(config, width, height, "meta", torch.float32))
    return counter.get_total_flops()


@contextmanager
def peak_memory(device: torch.device) -> Iterator[Callable[[], float | None]]:
    """Yields a function giving the peak allocated GiB since entry (None off the GPU)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    yield lambda: torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def time_calls(call: Callable[[], Any], device: torch.device, repeats: int) -> list[float]:
    """Seconds per call after one warm-up call."""
    call()
    synchronize(device)
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        synchronize(device)
        seconds.append(time.perf_counter() - started)
    return seconds


def time_pass(
    model: InfiniteTalkTransformer3DModel,
    inputs: dict[str, torch.Tensor],
    flops: int,
    passes: int,
    device: torch.device,
    countable: bool = True,
) -> dict[str, Any]:
    """``countable``: the model is the eager bf16 architecture ``bench.activation_memory`` counts (whole or
    token-chunked), not fused, compiled or quantised."""
    with peak_memory(device) as peak, torch.inference_mode():
        seconds = time_calls(lambda: model(**inputs), device, passes)
    median = statistics.median(seconds)
    return {
        "seconds_per_pass": median,
        "all_seconds": seconds,
        "tflops": flops / median / 1e12,
        "peak_gib": peak(),
        "counted_peak_gib": counted_peak_gib(model, inputs, device) if countable else None,
    }


def counted_peak_gib(
    model: InfiniteTalkTransformer3DModel, inputs: dict[str, torch.Tensor], device: torch.device
) -> float | None:
    """What ``bench.activation_memory`` predicts ``peak_gib`` to be: the bytes on the GPU before the pass
    (weights, inputs) plus the pass's activations counted on fake tensors (bf16, whole or token-chunked as
    the model is)."""
    if device.type != "cuda":
        return None
    *_, height, width = inputs["hidden_states"].shape
    config = json.dumps(dict(model.config), sort_keys=True)
    activations = _counted_activations(config, f"{width * 8}x{height * 8}", model.blocks[0].token_chunk)
    return torch.cuda.memory_allocated(device) / 2**30 + activations


@functools.cache
def _counted_activations(config: str, size: str, token_chunk: int | None) -> float:
    # Once per size and chunk, not per backend: a count runs the 14B forward on fake tensors.
    return counted_pass_gib(json.loads(config), size, token_chunk)


def bench_passes(
    model: InfiniteTalkTransformer3DModel,
    config: dict[str, Any],
    size: str,
    flops: int,
    backends: list[str],
    passes: int,
    device: torch.device,
    dtype: torch.dtype,
) -> list[dict[str, Any]]:
    inputs = pass_inputs(config, *parse_size(size), device, dtype)
    rows = []
    for backend in backends:
        row: dict[str, Any] = {"size": size, "backend": backend, "flops": flops}
        try:
            model.set_attention_backend(backend)
            row |= time_pass(model, inputs, flops, passes, device)
        except Exception as error:  # one backend missing or failing must not end the run
            row["error"] = f"{type(error).__name__}: {error}"[:300]
        rows.append(row)
        print(_pass_line(row), file=sys.stderr)
    model.set_attention_backend("native")
    return rows


def bench_variant(
    model: InfiniteTalkTransformer3DModel,
    config: dict[str, Any],
    flops_per_size: dict[str, int],
    label: str,
    change: Callable[[InfiniteTalkTransformer3DModel], Any],
    passes: int,
    device: torch.device,
    countable: bool,
) -> list[dict[str, Any]]:
    """Apply ``change`` to ``model`` in place (compile it, quantise it), then time a pass per size on the
    inputs the model saw just before, and report how far the output moved (relative L2 distance). The
    first call after the change (compilation, autotuning) is timed on its own."""
    dtype = model.dtype
    inputs = {size: pass_inputs(config, *parse_size(size), device, dtype) for size in flops_per_size}
    with torch.inference_mode():
        references = {size: model(**inputs[size]).float() for size in flops_per_size}
    change(model)
    rows = []
    for size, flops in flops_per_size.items():
        row: dict[str, Any] = {"size": size, "backend": f"native, {label}", "variant": label, "flops": flops}
        with torch.inference_mode():
            started = time.perf_counter()
            output = model(**inputs[size]).float()
            synchronize(device)
        row["first_call_seconds"] = time.perf_counter() - started
        row |= time_pass(model, inputs[size], flops, passes, device, countable)
        reference = references.pop(size)
        row["relative_difference"] = ((output - reference).norm() / reference.norm()).item()
        rows.append(row)
        print(_pass_line(row), file=sys.stderr)
    return rows


def _difference_note(row: dict[str, Any]) -> str:
    return f"output moved {row['relative_difference']:.4f}" if "relative_difference" in row else ""


def _pass_line(row: dict[str, Any]) -> str:
    if "error" in row:
        return f"{row['size']} {row['backend']}: skipped ({row['error']})"
    return (
        f"{row['size']} {row['backend']}: {row['seconds_per_pass']:.3f} s/pass, {row['tflops']:.1f} TFLOP/s"
    )


VAE_LAYOUTS = ("whole", "tiled", "channels-last", "fp32")


def _conv3d_weights_to(vae: WanVAE, memory_format: torch.memory_format) -> None:
    # Module.to(memory_format=channels_last_3d) refuses the VAE's 2-D convolutions; only 3-D ones take it.
    for module in vae.model.modules():
        if isinstance(module, torch.nn.Conv3d):
            module.weight.data = module.weight.data.contiguous(memory_format=memory_format)


@contextmanager
def vae_layout(vae: WanVAE, how: str) -> Iterator[None]:
    """``tiled``: diffusers' spatial tiling; ``channels-last``: the 3-D conv weights in channels_last_3d (the
    layout cuDNN's 3-D convolutions may prefer); ``fp32``: the VAE in float32, as the reference decodes (the
    pipeline runs it in the model's dtype, bf16 on a GPU). The VAE is left as it was found."""
    dtype = vae.dtype
    if how == "tiled":
        vae.enable_tiling()
    elif how == "channels-last":
        _conv3d_weights_to(vae, torch.channels_last_3d)
    elif how == "fp32":
        vae.model.float()
    try:
        yield
    finally:
        vae.disable_tiling()
        _conv3d_weights_to(vae, torch.contiguous_format)
        vae.model.to(dtype)


def bench_vae_decode(vae: WanVAE, size: str, device: torch.device, repeats: int) -> list[dict[str, Any]]:
    """One chunk's decode per ``VAE_LAYOUTS``: time, peak memory, and the largest pixel difference from the
    whole decode (pixels in [-1, 1])."""
    width, height = parse_size(size)
    latent = torch.randn(
        1, vae.latent_channels, CHUNK_LATENT_FRAMES, height // 8, width // 8, device=device
    ).to(vae.dtype)
    rows, outputs = [], []
    for how in VAE_LAYOUTS:
        with vae_layout(vae, how), peak_memory(device) as peak, torch.inference_mode():
            seconds = time_calls(lambda: vae.decode(latent), device, repeats)
            outputs.append(vae.decode(latent))
        rows.append(
            {
                "size": size,
                "how": how,
                "seconds_per_chunk": statistics.median(seconds),
                "all_seconds": seconds,
                "peak_gib": peak(),
                "max_abs_difference": (outputs[-1] - outputs[0]).abs().max().item(),
            }
        )
    return rows


# The plan that fits two replicas on one 80 GB GPU (bench.activation_memory, docs/kubernetes.md).
LEAN_OPTIONS: dict[str, Any] = {
    "fp8": Fp8Mode.WEIGHTS,
    "token_chunk": 4096,
    "vae_tiling": True,
    "batch_guidance": False,
}
SEED_JOB = {"size": "720x720", "frames": 125, "cfg": 1.0}  # with the request's defaults: 7 steps, shift 11


def bench_job(
    preset_name: str,
    device: torch.device,
    dtype: torch.dtype,
    out: Path,
    job: dict[str, Any],
    options: dict[str, Any],
) -> dict[str, Any]:
    """One job end to end, every stage, after a warm-up job (kernel selection, allocator); its peak GPU
    memory holds the whole sampler replica plus wav2vec2, which a deployment keeps on the AudioEncoder."""
    components = apply_options(random_components(preset_name, device=device, dtype=dtype), **options)
    pipe = InfiniteTalkPipeline(components)
    width, height = parse_size(job["size"])
    request = GenerationRequest(
        image=load_image(ASSETS / "portrait.png"),
        speech=decode_audio(ASSETS / "speech.wav"),
        prompt="a woman is talking",
        width=width,
        height=height,
        frames=job["frames"],
        cfg=job["cfg"],
    )
    pipe.generate_to_file(request, out)
    synchronize(device)
    with peak_memory(device) as peak:
        started = time.perf_counter()
        output = pipe.generate_to_file(request, out)
        synchronize(device)
        total = time.perf_counter() - started
    figures = {
        "job": job,
        "options": dict(components.identities),
        "seconds": total,
        "stages": output.timings,
        "peak_gib": peak(),
    }
    if job == SEED_JOB:
        figures["over_dit_limit"] = total / DIT_LIMIT_SEED_JOB_S
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser("python -m bench.gpu_sampler", __doc__)
    parser.add_argument("--preset", default="infinitetalk-14b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--sizes", default=",".join(SEED_SIZES), help="comma-separated WxH")
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated diffusers backends")
    parser.add_argument("--passes", type=int, default=3, help="timed passes per size and backend")
    parser.add_argument(
        "--token-chunk",
        type=positive_int,
        help="after the bf16 passes, run the DiT's token-wise work N tokens at a time and time it again",
    )
    parser.add_argument(
        "--fuse-qkv",
        action="store_true",
        help="then fuse the attention projections (diffusers) and time it again",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="then torch.compile the DiT blocks and time it again (native attention)",
    )
    parser.add_argument(
        "--fp8",
        choices=[mode.value for mode in Fp8Mode if mode is not Fp8Mode.OFF],
        help="then quantise the DiT and time it again (native attention)",
    )
    parser.add_argument("--skip-passes", action="store_true", help="no DiT pass timings")
    parser.add_argument("--skip-vae", action="store_true")
    parser.add_argument("--skip-job", action="store_true")
    parser.add_argument("--job-size", default=SEED_JOB["size"], help="the job's WxH (default the seed's)")
    parser.add_argument("--job-frames", type=positive_int, default=SEED_JOB["frames"])
    parser.add_argument("--job-cfg", type=float, default=SEED_JOB["cfg"])
    parser.add_argument(
        "--job-lean",
        action="store_true",
        help="run the job on fp8 weights, token chunk 4096, a tiled VAE, guidance one pass at a time",
    )
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    preset = get_preset(args.preset)
    config = dict(preset.transformer)
    sizes = [size.strip() for size in args.sizes.split(",") if size.strip()]
    figures: dict[str, Any] = {"preset": preset.name, "dtype": str(dtype), "passes": []}
    if not args.skip_passes:
        model = build_transformer(config, preset.random_seed, device=device, dtype=dtype)
        flops_per_size = {size: count_pass_flops(config, *parse_size(size)) for size in sizes}
        for size, flops in flops_per_size.items():
            figures["passes"] += bench_passes(
                model, config, size, flops, args.backends.split(","), args.passes, device, dtype
            )
        # (label, change, still the architecture bench.activation_memory counts)
        variants: list[tuple[str, Callable[[InfiniteTalkTransformer3DModel], Any], bool]] = []
        if args.token_chunk:
            chunk = args.token_chunk
            variants.append((f"token chunk {chunk}", lambda model: model.set_token_chunk(chunk), True))
        if args.fuse_qkv:
            variants.append(("fused QKV", lambda model: model.fuse_qkv_projections(), False))
        if args.compile:
            variants.append(("compiled", lambda model: model.compile_repeated_blocks(fullgraph=True), False))
        if args.fp8:
            variants.append((f"fp8 {args.fp8}", lambda model: quantize_transformer(model, args.fp8), False))
        countable = True
        for label, change, keeps_architecture in variants:  # cumulative: fp8 rows of a compiled run too
            countable = countable and keeps_architecture
            figures["passes"] += bench_variant(
                model, config, flops_per_size, label, change, args.passes, device, countable
            )
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if not args.skip_vae:
        vae = build_vae(preset.vae, preset.random_seed).to(device, dtype)
        figures["vae_decode"] = [
            row for size in sizes for row in bench_vae_decode(vae, size, device, args.passes)
        ]
        del vae
    if not args.skip_job:
        with tempfile.TemporaryDirectory(prefix="bench-seed-job-") as scratch:
            job = {"size": args.job_size, "frames": args.job_frames, "cfg": args.job_cfg}
            options = LEAN_OPTIONS if args.job_lean else {}
            figures["job"] = bench_job(args.preset, device, dtype, Path(scratch) / "job.mp4", job, options)
    path = write_result("gpu_sampler", figures, args.results)
    rows = [
        (
            row["size"],
            row["backend"],
            row.get("seconds_per_pass"),
            row.get("tflops"),
            100 * row["tflops"] / H100_BF16_TFLOPS if "tflops" in row else None,
            row.get("peak_gib"),
            row.get("counted_peak_gib"),
            row["flops"] / 1e12,
            MODEL_MD_TFLOP.get(row["size"]),
            row["error"][:40] if "error" in row else _difference_note(row),
        )
        for row in figures["passes"]
    ]
    headers = [
        "size",
        "backend",
        "s/pass",
        "TFLOP/s",
        "% of 790",
        "peak GiB",
        "counted GiB",
        "TFLOP counted",
        "MODEL.md",
        "note",
    ]
    if rows:
        print(table(headers, rows))
    for vae in figures.get("vae_decode", []):
        peak = f", peak {vae['peak_gib']:.1f} GiB" if vae["peak_gib"] is not None else ""
        print(
            f"VAE decode {vae['size']} {vae['how']}: {vae['seconds_per_chunk']:.2f} s per 81-frame chunk"
            f"{peak}, pixels moved ≤ {vae['max_abs_difference']:.4f}"
        )
    if "job" in figures:
        job = figures["job"]
        peak = f", peak {job['peak_gib']:.1f} GiB" if job["peak_gib"] is not None else ""
        limit = f", {job['over_dit_limit']:.2f}x the 49 s DiT limit" if "over_dit_limit" in job else ""
        print(f"job {job['job']}: {job['seconds']:.1f} s end to end{peak}{limit}")
    print(f"result: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
