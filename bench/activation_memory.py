"""Activation memory of every GPU stage of a sampler replica, and what one replica needs in all, for the
14B model in bf16 at the API's sizes: counted on fake tensors (``bench.tensor_memory``), so it runs on any
machine in minutes and needs no weights.

Per size: one denoising step's DiT work on an 81-frame chunk (cfg 1: one pass; other cfg values add the
negative prompt, as one batch of 2 or, with ``model.batch_guidance: false``, one pass after the other),
whole and token-chunked (``model.token_chunk``); the VAE's image condition (81 frames encoded) and the end
of a chunk (decode, colour match, re-encode of the 9 motion frames), whole and spatially tiled
(``model.vae_tiling``); umT5 on two 512-token prompts; CLIP on the portrait. A replica's peak is its weights
(``bench.weights_memory``) plus its largest stage, since the stages run one after another; the table says
whether two replicas fit on one 80 GB GPU (``num_gpus: 0.5``) and on one 141 GB H200, keeping
``--reserve-gib`` per replica for what no tensor holds (CUDA context, library workspaces, allocator slack).
``bench.gpu_sampler`` reports the measured peak next to these on a GPU.

    python -m bench.activation_memory [--sizes 720x720,1280x720,480x832] [--token-chunk 4096]
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from diffusers import AutoencoderKLWan
from diffusers.models.attention_dispatch import attention_backend
from transformers import CLIPVisionConfig, CLIPVisionModel, UMT5Config, UMT5EncoderModel

from bench.report import bench_parser, table, write_result
from bench.tensor_memory import default_dtype, fake_tensors, peak_bytes
from bench.weights_memory import GPU_GIB
from bench.weights_memory import measure as measure_weights
from pipeline.conditioning.clip import ClipImageEncoder
from pipeline.conditioning.vae import WanVAE
from pipeline.models.transformer import InfiniteTalkTransformer3DModel
from pipeline.pipeline import decode_chunk, predict_velocity
from pipeline.presets import Preset, get_preset
from pipeline.sizes import parse_size
from pipeline.streaming import CHUNK_FRAMES
from pipeline.warmup import pass_inputs
from pipeline.weights.dit import build_transformer

SEED_SIZES = ("720x720", "1280x720", "480x832")  # the seed API's default and two of its other sizes
DTYPE = torch.bfloat16
DEFAULT_TOKEN_CHUNK = 4096
H200_GIB = 141 * 10**9 / 2**30
PROMPT_TOKENS = 512
GiB = 2**30


def fake_transformer(config: dict[str, Any]) -> InfiniteTalkTransformer3DModel:
    """Under ``fake_tensors()``: the DiT in bf16 with no data, its norms and modulation tables in fp32 as the
    loader leaves them."""
    return build_transformer(config, dtype=DTYPE)


# PyTorch's SDPA, which picks a fused kernel (flash or cuDNN on a GPU, flash on the CPU): O(L) memory beside
# its output. Counting with whatever backend happens to be active could count a math fallback's L×L scores.
COUNTED_BACKEND = "native"
# cfg 1 runs the prompt alone; other values add the negative prompt, batched or one pass after the other.
GUIDANCE = {"cfg 1": (1, True), "cfg ≠ 1, batched": (2, True), "cfg ≠ 1, one at a time": (2, False)}


def dit_pass_gib(
    model: InfiniteTalkTransformer3DModel,
    size: str,
    guidance: str,
    token_chunk: int | None,
    *,
    count_inputs: bool = True,
) -> float:
    """One denoising step's DiT work as the pipeline runs it (``predict_velocity``), its inputs (the noisy
    latent ‖ y, text, CLIP tokens, audio windows) included unless ``count_inputs`` is false."""
    batch, batched = GUIDANCE[guidance]
    config = dict(model.config)

    def inputs() -> dict[str, torch.Tensor]:
        return pass_inputs(config, *parse_size(size), "cpu", DTYPE, batch)

    given = None if count_inputs else inputs()

    def step() -> torch.Tensor:
        return predict_velocity(model, batched, **(given or inputs()))

    model.set_token_chunk(token_chunk)
    try:
        with attention_backend(COUNTED_BACKEND):
            return peak_bytes(step) / GiB
    finally:
        model.set_token_chunk(None)


def counted_pass_gib(config: dict[str, Any], size: str, token_chunk: int | None) -> float:
    """The activations of one batch-1 bf16 pass beyond its inputs, on a fake model built for the count."""
    with fake_tensors():
        return dit_pass_gib(fake_transformer(config), size, "cfg 1", token_chunk, count_inputs=False)


VAE_STAGES = ("image_condition", "chunk_decode")


def vae_stages_gib(
    vae: WanVAE, size: str, tiled: bool, stages: tuple[str, ...] = VAE_STAGES
) -> dict[str, float]:
    """The VAE's two jobs in a generation: the portrait's 81-frame condition, and a chunk's end as the
    pipeline runs it (``decode_chunk``: decode, colour match, re-encode of the 9 motion frames)."""
    width, height = parse_size(size)
    latents = (1, vae.latent_channels, 1 + (CHUNK_FRAMES - 1) // 4, height // 8, width // 8)
    portrait = torch.empty(1, 3, height, width, dtype=DTYPE)
    calls = {
        "image_condition": lambda: vae.image_condition(portrait, CHUNK_FRAMES),
        "chunk_decode": lambda: decode_chunk(
            vae, torch.empty(latents, dtype=DTYPE), portrait, 1.0, keep_from=0, next_chunk=True
        ),
    }
    if tiled:
        vae.enable_tiling()
    try:
        return {stage: peak_bytes(calls[stage]) / GiB for stage in stages}
    finally:
        vae.disable_tiling()


def conditioning_gib(preset: Preset) -> dict[str, float]:
    """umT5 on the prompt and the negative prompt, CLIP on one portrait: the same at every size."""
    with default_dtype(DTYPE):
        umt5 = UMT5EncoderModel(UMT5Config(**preset.text_encoder)).eval()
        clip = ClipImageEncoder(CLIPVisionModel(CLIPVisionConfig(**preset.image_encoder))).eval()
    ids = torch.zeros(2, PROMPT_TOKENS, dtype=torch.long)
    return {
        "text_encode": peak_bytes(lambda: umt5(input_ids=ids, attention_mask=torch.ones_like(ids))) / GiB,
        "image_encode": peak_bytes(lambda: clip(torch.empty(1, 3, 720, 720, dtype=DTYPE))) / GiB,
    }


def measure(preset: Preset, sizes: list[str], token_chunk: int) -> dict[str, Any]:
    figures: dict[str, Any] = {"token_chunk": token_chunk, "sizes": {}}
    with fake_tensors():
        figures["conditioning_gib"] = conditioning_gib(preset)
        model = fake_transformer(dict(preset.transformer))
        with default_dtype(DTYPE):
            vae = WanVAE(AutoencoderKLWan(**preset.vae)).eval()
        for size in sizes:
            figures["sizes"][size] = {
                "dit_pass_gib": {
                    guidance: {
                        "whole": dit_pass_gib(model, size, guidance, None),
                        "token_chunked": dit_pass_gib(model, size, guidance, token_chunk),
                    }
                    for guidance in GUIDANCE
                },
                "vae_gib": {
                    "whole": vae_stages_gib(vae, size, tiled=False),
                    "tiled": vae_stages_gib(vae, size, tiled=True),
                },
            }
            print(f"{size}: counted", file=sys.stderr)
    figures["weights_gib"] = measure_weights(preset)["sampler_replica_gib"]
    figures["replicas"] = replica_rows(figures)
    return figures


# A memory plan: how the DiT runs, how the VAE runs, and how guidance runs its two prompts.
PLANS = {
    "as loaded": ("whole", "whole", "cfg ≠ 1, batched"),
    "lean": ("token_chunked", "tiled", "cfg ≠ 1, one at a time"),
}


def replica_rows(figures: dict[str, Any]) -> list[dict[str, Any]]:
    """Weights + the largest stage, per size, guidance, memory plan and weights format."""
    weights = {"bf16": figures["weights_gib"]["bf16"], "fp8 DiT": figures["weights_gib"]["fp8_dit"]}
    conditioning = max(figures["conditioning_gib"].values())
    rows = []
    for size, stages in figures["sizes"].items():
        for guidance in ("cfg 1", "cfg ≠ 1"):
            for plan, (dit_key, vae_key, guided) in PLANS.items():
                dit = stages["dit_pass_gib"]["cfg 1" if guidance == "cfg 1" else guided][dit_key]
                activations = max(dit, *stages["vae_gib"][vae_key].values(), conditioning)
                for fmt, weight_gib in weights.items():
                    rows.append(
                        {
                            "size": size,
                            "guidance": guidance,
                            "plan": plan,
                            "weights": fmt,
                            "activations_gib": activations,
                            "replica_gib": weight_gib + activations,
                        }
                    )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser("python -m bench.activation_memory", __doc__)
    parser.add_argument("--preset", default="infinitetalk-14b")
    parser.add_argument("--sizes", default=",".join(SEED_SIZES), help="comma-separated WxH")
    parser.add_argument("--token-chunk", type=int, default=DEFAULT_TOKEN_CHUNK, help="tokens per slice")
    parser.add_argument(
        "--reserve-gib",
        type=float,
        default=2.0,
        help="per replica, for the CUDA context, workspaces and allocator slack (default 2)",
    )
    args = parser.parse_args(argv)
    if args.token_chunk < 1:
        parser.error("--token-chunk must be a positive integer")
    preset = get_preset(args.preset)
    sizes = [size.strip() for size in args.sizes.split(",") if size.strip()]
    figures = {
        "preset": preset.name,
        "reserve_gib": args.reserve_gib,
        **measure(preset, sizes, args.token_chunk),
    }
    path = write_result("activation_memory", figures, args.results)
    stage_rows: list[tuple[object, ...]] = []
    for size, stages in figures["sizes"].items():
        for guidance, dit in stages["dit_pass_gib"].items():
            stage_rows.append((size, f"DiT step, {guidance}", dit["whole"], dit["token_chunked"]))
        whole, tiled = stages["vae_gib"]["whole"], stages["vae_gib"]["tiled"]
        stage_rows += [(size, f"VAE {stage}", whole[stage], tiled[stage]) for stage in whole]
    stage_rows += [("any", stage, gib, None) for stage, gib in figures["conditioning_gib"].items()]
    print(table(["size", "stage", "GiB", f"GiB chunked ({args.token_chunk}) / tiled"], stage_rows))
    halves = {"80 GB": GPU_GIB / 2, "141 GB": H200_GIB / 2}
    replica_table = [
        (
            row["size"],
            row["guidance"],
            row["plan"],
            row["weights"],
            row["replica_gib"],
            *("yes" if row["replica_gib"] + args.reserve_gib <= half else "no" for half in halves.values()),
        )
        for row in figures["replicas"]
    ]
    print(
        table(
            ["size", "guidance", "plan", "weights", "replica GiB", *(f"2 per {gpu}" for gpu in halves)],
            replica_table,
        )
    )
    print(f"result: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
