"""Per-stage time of one generation at 125 and 250 frames, and the ratio T(250)/T(125).

250 frames are 4 chunks and 125 are 2, so ≈ 2.0 is the target for the whole generation: text, CLIP, the
image latents and the audio embeddings are computed once per job, only sampling and decoding scale with
the chunk count. The lengths run interleaved (125, 250, 125, 250 ...) after one warm-up, and each figure
is the median over the repeats, so drifting machine load hits both alike.

    python -m bench.pipeline_stages                      # tiny preset on CPU, 480x480, 2 repeats
    python -m bench.pipeline_stages --preset infinitetalk-14b --weights /models --device cuda --size 720x720
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.report import bench_parser, table, write_result
from pipeline.audio import decode_audio
from pipeline.components import load_components
from pipeline.conditioning import load_image
from pipeline.pipeline import GenerationRequest, InfiniteTalkPipeline
from pipeline.sizes import parse_size

ASSETS = Path(__file__).resolve().parents[1] / "pipeline" / "assets"
LENGTHS = (125, 250)
# Stages computed once per job: their time must not grow with the number of chunks.
ONCE_PER_JOB = ("audio_encode", "text_encode", "image_encode")


def run_once(pipe: InfiniteTalkPipeline, request: GenerationRequest, out: Path) -> dict[str, float]:
    started = time.perf_counter()
    output = pipe.generate_to_file(request, out)
    return {**output.timings, "total": time.perf_counter() - started}


def medians(runs: list[dict[str, float]]) -> dict[str, float]:
    return {stage: statistics.median(run[stage] for run in runs) for stage in runs[0]}


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser("python -m bench.pipeline_stages", __doc__)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--weights", type=Path)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", default="480x480")
    parser.add_argument("--steps", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    width, height = parse_size(args.size)
    components = load_components(args.preset, weights_dir=args.weights, device=args.device)
    pipe = InfiniteTalkPipeline(components)
    image, speech = load_image(ASSETS / "portrait.png"), decode_audio(ASSETS / "speech.wav")

    def request(frames: int) -> GenerationRequest:
        return GenerationRequest(
            image=image, speech=speech, prompt="a person is talking", width=width, height=height,
            frames=frames, steps=args.steps,
        )  # fmt: skip

    runs: dict[int, list[dict[str, float]]] = {frames: [] for frames in LENGTHS}
    with tempfile.TemporaryDirectory(prefix="bench-stages-") as scratch:
        out = Path(scratch) / "out.mp4"
        run_once(pipe, request(LENGTHS[0]), out)  # warm-up: first-call allocations and kernel choices
        for _ in range(args.repeats):
            for frames in LENGTHS:
                runs[frames].append(run_once(pipe, request(frames), out))
    short, long = (medians(runs[frames]) for frames in LENGTHS)
    ratios = {stage: long[stage] / short[stage] if short[stage] else None for stage in short}
    figures = {
        "preset": args.preset,
        "size": f"{width}x{height}",
        "steps": args.steps,
        "repeats": args.repeats,
        "seconds": {str(frames): medians(runs[frames]) for frames in LENGTHS},
        "runs": {str(frames): runs[frames] for frames in LENGTHS},
        "ratio_250_over_125": ratios,
    }
    path = write_result("pipeline_stages", figures, args.results)
    rows = [(stage, short[stage], long[stage], ratios[stage]) for stage in short]
    print(table(["stage", "125 frames (s)", "250 frames (s)", "ratio"], rows))
    once = ", ".join(f"{stage} {ratios[stage]:.2f}" for stage in ONCE_PER_JOB if ratios.get(stage))
    print(f"\nT(250)/T(125) = {ratios['total']:.2f} (target ≈ 2.0); once-per-job stages: {once}")
    print(f"result: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
