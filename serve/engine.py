"""The sampler replica's engine: the InfiniteTalk pipeline behind the runner's ``Engine`` protocol."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.audio import decode_audio
from pipeline.components import Components
from pipeline.conditioning import load_image
from pipeline.pipeline import GenerationRequest, InfiniteTalkPipeline
from pipeline.progress import Progress
from pipeline.source_video import chunk_references
from pipeline.streaming import chunk_count
from pipeline.two_speakers import Box, SpeakingOrder
from serve import fields
from serve.jobs.records import JobSettings
from serve.jobs.runner import EngineOutput, Inputs, ProgressFn

SpeechEncoder = Callable[[np.ndarray, int], torch.Tensor]


def code_version() -> str:
    """Package version plus the commit the image was built from (``INFINITETALK_COMMIT``), when set."""
    try:
        package = version("infinitetalk-serve")
    except PackageNotFoundError:
        package = "unknown"
    commit = os.environ.get("INFINITETALK_COMMIT")
    return f"{package}+{commit}" if commit else package


class PipelineEngine:
    """Decodes the staged inputs, asks the audio-encoder deployment for embeddings, generates, muxes."""

    def __init__(self, components: Components, encode_speech: SpeechEncoder) -> None:
        self._pipeline = InfiniteTalkPipeline(components)
        self._components = components
        self._encode_speech = encode_speech

    def run(
        self, settings: JobSettings, inputs: Inputs, out_path: Path, progress: ProgressFn
    ) -> EngineOutput:
        two_speakers = settings.order is not None
        source_frames = None
        if "video" in inputs:
            source_frames = chunk_references(inputs["video"], settings.frames, name=fields.VIDEO)
            image, speech_field = source_frames[0], fields.DUB_AUDIO
        elif two_speakers:
            image, speech_field = load_image(inputs["image"], name=fields.MULTI_IMAGE), fields.LEFT_AUDIO
        else:
            image, speech_field = load_image(inputs["image"], name=fields.IMAGE), fields.AUDIO
        request = GenerationRequest(
            image=image,
            source_frames=source_frames,
            speech=decode_audio(inputs["audio"], name=speech_field),
            speech2=decode_audio(inputs["audio2"], name=fields.RIGHT_AUDIO) if two_speakers else None,
            order=SpeakingOrder(settings.order or SpeakingOrder.MEANWHILE),
            boxes=_boxes(settings),
            prompt=settings.prompt,
            width=settings.width,
            height=settings.height,
            frames=settings.frames,
            steps=settings.steps,
            shift=settings.shift,
            cfg=settings.cfg,
            audio_cfg=settings.audio_cfg,
            seed=settings.seed,
        )
        self._pipeline.check_inputs(request)
        encode_started = time.perf_counter()
        embeddings = torch.stack(
            [self._encode_speech(track, request.frames) for track in request.speech_tracks()]
        )
        encode_seconds = time.perf_counter() - encode_started

        def on_progress(p: Progress) -> None:
            progress(p.fraction, p.eta_seconds)

        output = self._pipeline.generate_to_file(
            request, out_path, audio_embeddings=embeddings, progress=on_progress
        )
        output.timings["audio_encode"] = output.timings.get("audio_encode", 0.0) + encode_seconds
        return EngineOutput(
            timings=output.timings, reproducibility=self._record(request, output.working_size)
        )

    def _record(self, request: GenerationRequest, working: tuple[int, int]) -> dict[str, Any]:
        parts = self._components
        return {
            "seed": request.seed,
            "steps": request.steps,
            "shift": request.shift,
            "cfg": request.cfg,
            "audio_cfg": request.audio_cfg,
            "frames": request.frames,
            "mode": "video-to-video" if request.source_frames is not None else "image-to-video",
            "speakers": 2 if request.two_speakers else 1,
            **({"order": request.order.value} if request.two_speakers else {}),
            "chunks": chunk_count(request.frames),
            "output_size": f"{request.width}x{request.height}",
            "working_size": f"{working[0]}x{working[1]}",
            "preset": parts.preset.name,
            "weights": parts.identities,
            "dtype": str(parts.dtype).removeprefix("torch."),
            "code_version": code_version(),
        }


def _boxes(settings: JobSettings) -> tuple[Box, Box] | None:
    if settings.boxes is None:
        return None
    left, right = (Box(*box) for box in settings.boxes)
    return left, right
