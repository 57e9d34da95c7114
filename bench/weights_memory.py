"""Weight memory of a sampler replica per component, in bf16 and with fp8 DiT weights, counted exactly on
PyTorch's meta device (no weights, no memory needed, runs anywhere).

A sampler replica holds the DiT, umT5, CLIP and the VAE; wav2vec2 lives on the AudioEncoder deployment.
With ``fp8`` the DiT's block linears (``pipeline.quantization.is_quantizable``) take one byte per weight
plus an fp32 scale per output channel, the layout ``tests/unit/test_quantization.py`` pins on real layers.
What two replicas on one GPU leave each for activations, the CUDA context and the allocator's slack is
printed for an 80 GB card; the activations themselves need a GPU to measure (``bench.gpu_sampler``).

    python -m bench.weights_memory [--preset infinitetalk-14b]
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch
from torch import nn

from bench.report import bench_parser, table, write_result
from pipeline.models.transformer import InfiniteTalkTransformer3DModel
from pipeline.presets import Preset, get_preset
from pipeline.quantization import is_quantizable
from pipeline.weights import clip, t5, vae, wav2vec2
from pipeline.weights.dit import parameter_dtype

BF16_BYTES = 2
FP8_SCALE_BYTES = 4
GPU_GIB = 80 * 10**9 / 2**30  # an "80 GB" card, in GiB


def _on_meta(build: Callable[[], nn.Module]) -> nn.Module:
    with torch.device("meta"):
        return build()


def components_on_meta(preset: Preset) -> dict[str, nn.Module]:
    return {
        "dit": _on_meta(lambda: InfiniteTalkTransformer3DModel(**preset.transformer)),
        "umt5": _on_meta(lambda: t5.build_text_encoder(preset.text_encoder)),
        "clip": _on_meta(lambda: clip.build_image_encoder(preset.image_encoder)),
        "vae": _on_meta(lambda: vae.build_vae(preset.vae)),
        "wav2vec2 (AudioEncoder)": _on_meta(lambda: wav2vec2.build_audio_encoder(preset.audio_encoder)),
    }


def bf16_bytes(module: nn.Module) -> int:
    """Bytes loaded in bf16; the DiT keeps its norms and modulation tables in fp32, as its loader does."""
    if isinstance(module, InfiniteTalkTransformer3DModel):
        return sum(
            parameter.numel() * parameter_dtype(module, name, torch.bfloat16).itemsize
            for name, parameter in module.named_parameters()
        )
    return sum(parameter.numel() for parameter in module.parameters()) * BF16_BYTES


def fp8_bytes(transformer: nn.Module) -> int:
    """The DiT's bytes with its block linears in fp8 (biases stay in bf16)."""
    saved = 0
    for name, module in transformer.named_modules():
        if is_quantizable(module, name):
            rows, columns = module.weight.shape
            saved += rows * columns * BF16_BYTES - (rows * columns + rows * FP8_SCALE_BYTES)
    return bf16_bytes(transformer) - saved


def measure(preset: Preset) -> dict[str, dict[str, float]]:
    modules = components_on_meta(preset)
    gib = {name: bf16_bytes(module) / 2**30 for name, module in modules.items()}
    sampler = [name for name in modules if "AudioEncoder" not in name]
    fp8_dit = fp8_bytes(modules["dit"]) / 2**30
    bf16_total = sum(gib[name] for name in sampler)
    fp8_total = bf16_total - gib["dit"] + fp8_dit
    return {
        "parameters_billion": {
            name: sum(p.numel() for p in module.parameters()) / 1e9 for name, module in modules.items()
        },
        "bf16_gib": gib,
        "sampler_replica_gib": {"bf16": bf16_total, "fp8_dit": fp8_total, "fp8_dit_alone": fp8_dit},
        "two_replicas_per_80gb_headroom_gib": {
            "bf16": GPU_GIB / 2 - bf16_total,
            "fp8_dit": GPU_GIB / 2 - fp8_total,
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser("python -m bench.weights_memory", __doc__)
    parser.add_argument("--preset", default="infinitetalk-14b")
    args = parser.parse_args(argv)
    preset = get_preset(args.preset)
    figures = {"preset": preset.name, **measure(preset)}
    path = write_result("weights_memory", figures, args.results)
    params, gib = figures["parameters_billion"], figures["bf16_gib"]
    rows: list[tuple[object, ...]] = [(name, params[name], gib[name]) for name in gib]
    replica, headroom = figures["sampler_replica_gib"], figures["two_replicas_per_80gb_headroom_gib"]
    rows += [
        ("dit with fp8 block linears", None, replica["fp8_dit_alone"]),
        ("sampler replica, bf16", None, replica["bf16"]),
        ("sampler replica, fp8 DiT", None, replica["fp8_dit"]),
    ]
    print(table(["weights", "parameters (B)", "GiB"], rows))
    print(
        f"two replicas per 80 GB GPU leave each {headroom['bf16']:.1f} GiB (bf16) or "
        f"{headroom['fp8_dit']:.1f} GiB (fp8 DiT) for activations and the CUDA context"
    )
    print(f"result: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
