"""One timed generation job on the GPU benchmark's models, and how its frames compare (shared by the
benchmark's main process and its replica workers)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.audio import decode_audio
from pipeline.components import Components
from pipeline.conditioning import load_image
from pipeline.pipeline import GenerationRequest, InfiniteTalkPipeline, synchronize
from pipeline.sizes import parse_size
from pipeline.video import to_uint8_frames

ASSETS = Path(__file__).resolve().parents[1] / "pipeline" / "assets"


def seed_request(size: str, frames: int) -> GenerationRequest:
    """The seed's default job (7 steps, shift 11, cfg 1, its seed) on the bundled portrait and speech."""
    width, height = parse_size(size)
    return GenerationRequest(
        image=load_image(ASSETS / "portrait.png"),
        speech=decode_audio(ASSETS / "speech.wav"),
        prompt="a woman is talking",
        width=width,
        height=height,
        frames=frames,
    )


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def run_job(
    components: Components, request: GenerationRequest, out: Path
) -> tuple[dict[str, Any], np.ndarray]:
    """One job end to end (every stage, the MP4 written); its figures and its frames."""
    device = components.device
    reset_peak(device)
    started = time.perf_counter()
    output = InfiniteTalkPipeline(components).generate_to_file(request, out)
    synchronize(device)
    seconds = time.perf_counter() - started
    figures = {"seconds": seconds, "stages": output.timings, "peak_gib": peak_gib(device)}
    return figures, to_uint8_frames(output.video)


def psnr_db(frames: np.ndarray, reference: np.ndarray) -> float:
    """PSNR of uint8 frames against the reference frames, over the whole clip (inf when identical)."""
    error = np.mean((frames.astype(np.float64) - reference.astype(np.float64)) ** 2)
    return float("inf") if error == 0 else float(10 * np.log10(255.0**2 / error))
