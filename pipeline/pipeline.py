"""InfiniteTalk: portrait + speech → lip-synced video, as numbered steps (MODEL.md §1–§6)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipeline.audio import (
    InfiniteTalkWav2Vec2,
    normalize_loudness,
    pad_embeddings_to,
    speech_to_frame_embeddings,
    window_audio_embeddings,
)
from pipeline.color import match_colors
from pipeline.components import Components
from pipeline.conditioning import portrait_tensor
from pipeline.conditioning.vae import WanVAE
from pipeline.errors import InputError, SizeError
from pipeline.guidance import Condition, Guidance
from pipeline.models.transformer import InfiniteTalkTransformer3DModel
from pipeline.presets import NEGATIVE_PROMPT
from pipeline.progress import ProgressCallback, ProgressTracker, Work
from pipeline.schedule import euler_step, flow_matching_sigmas, model_timestep
from pipeline.streaming import (
    CHUNK_FRAMES,
    FPS,
    MOTION_FRAMES,
    PATCH_SPATIAL,
    VAE_SPATIAL_STRIDE,
    covered_frames,
    latent_frames,
    plan_chunks,
)
from pipeline.two_speakers import Box, SpeakingOrder, arrange_speech, mix_speech, speaker_masks
from pipeline.video import fit_audio, resize_video, to_uint8_frames, write_mp4

logger = logging.getLogger(__name__)

SPEECH_SAMPLE_RATE = 16_000
_SIZE_MULTIPLE = VAE_SPATIAL_STRIDE * PATCH_SPATIAL
_MAX_FRAMES = 25 * 60 * 10


@dataclass(frozen=True)
class GenerationRequest:
    """Everything one generation needs, already decoded; the engine-side twin of the API's input schema."""

    image: Image.Image
    speech: np.ndarray
    prompt: str
    width: int = 720
    height: int = 720
    frames: int = 125
    steps: int = 7
    shift: float = 11.0
    cfg: float = 1.0
    audio_cfg: float = 1.0
    seed: int = 96860978
    negative_prompt: str = NEGATIVE_PROMPT
    color_correction: float = 1.0
    #: A second person's speech (two speakers: ``speech`` is the left person's, this the right one's), when
    #: each speaks (``order``) and where each is (``boxes``, default: the left and right halves).
    speech2: np.ndarray | None = None
    order: SpeakingOrder = SpeakingOrder.MEANWHILE
    boxes: tuple[Box, Box] | None = None
    #: Video-to-video: one reference frame per chunk, the source video's frame at that chunk's start
    #: (``pipeline.source_video.frames_at``); ``image`` is the first, and the colour reference throughout.
    source_frames: tuple[Image.Image, ...] | None = None

    def chunk_reference(self, chunk: int) -> Image.Image:
        """The frame chunk ``chunk`` is conditioned on: the portrait, or the source video's frame."""
        return self.image if self.source_frames is None else self.source_frames[chunk]

    @property
    def two_speakers(self) -> bool:
        return self.speech2 is not None

    def speech_tracks(self) -> tuple[np.ndarray, ...]:
        """The speech the video is conditioned on: one track, or the two speakers' laid out in time."""
        if self.speech2 is None:
            return (self.speech,)
        return arrange_speech(self.speech, self.speech2, self.order)

    def sound(self) -> np.ndarray:
        """The video's audio track before it is fitted to the frame count."""
        if self.speech2 is None:
            return self.speech
        return mix_speech(arrange_speech(self.speech, self.speech2, self.order), SPEECH_SAMPLE_RATE)


@dataclass
class GenerationOutput:
    """The generated clip (``[3, N, H, W]`` in [−1, 1]), the final latents of each chunk, and stage times."""

    video: torch.Tensor
    chunk_latents: list[torch.Tensor]
    working_size: tuple[int, int]
    timings: dict[str, float] = field(default_factory=dict)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued kernels, so wall time and progress describe finished work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def predict_velocity(
    transformer: InfiniteTalkTransformer3DModel,
    batched: bool,
    speaker_masks: torch.Tensor | None = None,
    **inputs: torch.Tensor,
) -> torch.Tensor:
    """The DiT over the guidance batch: in one pass, or (``batched=False``) one pass per entry, which halves
    the activation peak (``Components.batch_guidance``). ``speaker_masks`` go with every entry."""
    batch = inputs["hidden_states"].shape[0]
    if batched or batch == 1:
        return transformer(**inputs, speaker_masks=speaker_masks)
    return torch.cat(
        [
            transformer(
                **{name: value[i : i + 1] for name, value in inputs.items()}, speaker_masks=speaker_masks
            )
            for i in range(batch)
        ]
    )


def pass_groups(
    passes: tuple[Condition, ...], speech: torch.Tensor, masks: torch.Tensor | None
) -> list[tuple[list[int], torch.Tensor, torch.Tensor | None]]:
    """The guidance passes of a step as DiT calls: ``(rows, audio_embeds, speaker_masks)`` each.

    ``speech`` ``[tracks, frames, window, layers, dim]`` is one chunk's windows. One speaker: one call over
    every pass, silent passes with zero embeddings. Two speakers: the passes that hear both speakers in one
    call, and the silent ones in another with one track of zeros, which the reference's silent passes are
    (its single-speaker path: no masks, no rotary placement).
    """
    rows = list(range(len(passes)))
    silent = [i for i in rows if passes[i].silent]
    if speech.shape[0] == 1:
        audio = torch.stack([torch.zeros_like(speech[0]) if passes[i].silent else speech[0] for i in rows])
        return [(rows, audio, None)]
    speaking = [i for i in rows if not passes[i].silent]
    groups = [(speaking, speech.unsqueeze(0).expand(len(speaking), *speech.shape), masks)]
    if silent:
        groups.append(
            (silent, torch.zeros_like(speech[0]).unsqueeze(0).expand(len(silent), *speech.shape[1:]), None)
        )
    return groups


def decode_chunk(
    vae: WanVAE,
    latent: torch.Tensor,
    portrait: torch.Tensor,
    color_correction: float,
    *,
    keep_from: int,
    next_chunk: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A chunk's latents → its colour-matched frames from ``keep_from`` on (on the host) and, when another
    chunk follows, the latents of its last 9 frames, which that chunk starts from. The decoded chunk is let
    go before the re-encode, so the two never hold the GPU together."""
    decoded = vae.decode(latent.to(vae.dtype))[0].float()
    decoded = match_colors(decoded, portrait[0].float(), color_correction)
    piece = decoded[:, keep_from:].cpu()
    if not next_chunk:
        return piece, None
    # A copy even when the VAE's dtype is already float32: a view would keep the whole decoded chunk alive.
    motion = decoded[:, -MOTION_FRAMES:].unsqueeze(0).to(vae.dtype, copy=True)
    del decoded
    return piece, vae.encode(motion)


class StageTimer:
    """Wall seconds per stage, summed over repeats; on a GPU each stage ends when its kernels have run."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
            synchronize(self.device)
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start


def _round_to_multiple(value: float) -> int:
    return max(_SIZE_MULTIPLE, round(value / _SIZE_MULTIPLE) * _SIZE_MULTIPLE)


def encode_speech(encoder: InfiniteTalkWav2Vec2 | None, speech: np.ndarray, frames: int) -> torch.Tensor:
    """16 kHz mono speech → ``[frames, 12, C]`` embeddings, the speech fitted to ``frames`` of video first.

    A module function so the server's audio-encoder deployment runs exactly this on its own replicas.
    """
    if encoder is None:
        raise InputError("this pipeline was loaded without an audio encoder; pass audio_embeddings")
    fitted = fit_audio(speech.astype(np.float32), SPEECH_SAMPLE_RATE, frames)
    normalized = normalize_loudness(fitted, SPEECH_SAMPLE_RATE)
    return speech_to_frame_embeddings(encoder, normalized, frames)


def working_size(width: int, height: int, max_area: int | None) -> tuple[int, int]:
    """The multiple-of-16 size the model generates at; the output is resized to ``width × height``."""
    scale = 1.0 if max_area is None else min(1.0, math.sqrt(max_area / (width * height)))
    return _round_to_multiple(width * scale), _round_to_multiple(height * scale)


class InfiniteTalkPipeline:
    """Runs the streaming InfiniteTalk sampler on loaded components (see ``pipeline.components``)."""

    def __init__(self, components: Components) -> None:
        self.components = components

    @property
    def device(self) -> torch.device:
        return self.components.device

    @property
    def dtype(self) -> torch.dtype:
        return self.components.dtype

    def check_inputs(self, request: GenerationRequest) -> None:
        if not request.prompt or not request.prompt.strip():
            raise InputError("prompt must not be empty")
        for name in ("width", "height"):
            value = getattr(request, name)
            if not isinstance(value, int) or value < _SIZE_MULTIPLE or value % 2:
                raise SizeError(f"{name} must be an even integer ≥ {_SIZE_MULTIPLE}, got {value!r}")
        if not 1 <= request.frames <= _MAX_FRAMES:
            raise InputError(f"frames must be between 1 and {_MAX_FRAMES}, got {request.frames}")
        if request.steps < 1:
            raise InputError(f"steps must be at least 1, got {request.steps}")
        if request.shift <= 0:
            raise InputError(f"shift must be positive, got {request.shift}")
        for name in ("cfg", "audio_cfg"):
            if not getattr(request, name) > 0:
                raise InputError(f"{name} must be positive, got {getattr(request, name)}")
        for name in ("speech", "speech2"):
            speech = getattr(request, name)
            if speech is not None and (speech.ndim != 1 or speech.size == 0):
                raise InputError(f"{name} must be a non-empty mono waveform")
        variant = self.components.preset.variant
        if (2 if request.two_speakers else 1) > variant.speakers:
            raise InputError(
                f"the {variant.name} checkpoint (preset {self.components.preset.name!r}) takes one person's "
                "speech; two speakers need the multi checkpoint (preset infinitetalk-14b-multi)"
            )
        if request.boxes is not None:
            if not request.two_speakers:
                raise InputError("speaker boxes go with two speakers (speech2)")
            for name, box in zip(("left speaker", "right speaker"), request.boxes, strict=True):
                box.check(name, request.image.size)
        if request.source_frames is not None:
            chunks = len(plan_chunks(request.frames))
            if len(request.source_frames) != chunks:
                raise InputError(
                    f"{request.frames} frames take {chunks} source frames (one per chunk), "
                    f"got {len(request.source_frames)}"
                )
            sizes = {frame.size for frame in request.source_frames}
            if sizes != {request.image.size}:
                raise InputError(f"source frames differ in size from the first one: {sorted(sizes)}")

    # -- the whole generation -------------------------------------------------------------------------

    def generate(
        self,
        request: GenerationRequest,
        audio_embeddings: torch.Tensor | None = None,
        progress: ProgressCallback | None = None,
    ) -> GenerationOutput:
        tracker = self._tracker(request, progress, writes_output=False)
        return self._generate(request, audio_embeddings, tracker)

    def _tracker(
        self, request: GenerationRequest, progress: ProgressCallback | None, *, writes_output: bool
    ) -> ProgressTracker:
        self.check_inputs(request)
        chunks = len(plan_chunks(request.frames))
        return ProgressTracker(chunks, request.steps, progress, writes_output=writes_output)

    @torch.inference_mode()
    def _generate(
        self,
        request: GenerationRequest,
        audio_embeddings: torch.Tensor | None,
        tracker: ProgressTracker,
    ) -> GenerationOutput:
        parts = self.components
        timer = StageTimer(self.device)
        width, height = working_size(request.width, request.height, parts.preset.max_working_area)
        chunks = plan_chunks(request.frames)

        # 1. Speech → per-frame wav2vec2 embeddings → 5-frame windows covering every chunk; two speakers:
        # each person's track on its own, stacked ``[2, frames, ...]``.
        with timer("audio_encode"):
            tracks = request.speech_tracks()
            if audio_embeddings is None:
                audio_embeddings = torch.stack(
                    [encode_speech(parts.audio_encoder, track, request.frames) for track in tracks]
                )
            elif audio_embeddings.ndim == 3:
                audio_embeddings = audio_embeddings[None]
            if audio_embeddings.shape[0] != len(tracks):
                raise InputError(
                    f"{len(tracks)} speech track(s) need as many embeddings, got {audio_embeddings.shape[0]}"
                )
            audio_windows = torch.stack(
                [
                    window_audio_embeddings(pad_embeddings_to(track.float(), covered_frames(request.frames)))
                    for track in audio_embeddings
                ]
            ).to(self.device, self.dtype)

        # 2. Prompt (and the negative prompt when a guidance pass drops the text) → umT5 embeddings (cached),
        # one row per pass of a step.
        guidance = Guidance(text=request.cfg, audio=request.audio_cfg)
        passes = guidance.passes
        with timer("text_encode"):
            prompts = [request.prompt]
            if guidance.needs_negative_prompt:
                prompts.append(request.negative_prompt)
            encoded = parts.text_encoder.encode(prompts).to(self.dtype)
            text = encoded[[1 if condition.negative_prompt else 0 for condition in passes]]

        # 3. Portrait (or the first source frame) → pixels at the working size, CLIP tokens, the 20-channel
        # ``y`` and its clean latent; video-to-video renews the first three for each chunk's source frame.
        with timer("image_encode"):
            portrait, clip_tokens, y = self._condition(request.image, width, height)
            first_latent = y[:, -parts.latent_channels :, :1]
            masks = None
            if request.two_speakers:
                latent_size = (height // VAE_SPATIAL_STRIDE, width // VAE_SPATIAL_STRIDE)
                masks = speaker_masks(request.image.size, request.boxes, (width, height), latent_size)
                masks = masks.to(self.device)

        # 4. Chunk by chunk: denoise, decode, re-encode the last 9 frames as the next chunk's motion frames.
        batch = len(passes)
        sigmas = flow_matching_sigmas(request.steps, request.shift)
        generator = torch.Generator("cpu").manual_seed(request.seed % 2**63)
        latent_shape = (
            1,
            parts.latent_channels,
            latent_frames(CHUNK_FRAMES),
            height // VAE_SPATIAL_STRIDE,
            width // VAE_SPATIAL_STRIDE,
        )
        clean = first_latent
        pieces: list[torch.Tensor] = []
        chunk_latents: list[torch.Tensor] = []
        tracker.restart_clock()
        for chunk in chunks:
            if chunk.index > 0 and request.source_frames is not None:
                with timer("image_encode"):
                    _, clip_tokens, y = self._condition(request.chunk_reference(chunk.index), width, height)
            clip_batch = clip_tokens.expand(batch, -1, -1)
            y_batch = y.expand(batch, -1, -1, -1, -1)
            with timer("sampling"):
                noise = torch.randn(latent_shape, generator=generator, dtype=torch.float32)
                latent = noise.to(self.device, self.dtype)
                clean_frames = clean.shape[2]
                latent[:, :, :clean_frames] = clean
                groups = pass_groups(passes, audio_windows[:, chunk.start : chunk.end], masks)
                for step in range(request.steps):
                    sigma, sigma_next = sigmas[step], sigmas[step + 1]
                    model_input = torch.cat([latent.expand(batch, -1, -1, -1, -1), y_batch], dim=1)
                    timestep = torch.full((batch,), model_timestep(sigma), device=self.device)
                    velocity = torch.empty_like(model_input[:, : parts.latent_channels])
                    for rows, chunk_audio, group_masks in groups:
                        velocity[rows] = predict_velocity(
                            parts.transformer,
                            parts.batch_guidance,
                            speaker_masks=group_masks,
                            hidden_states=model_input[rows],
                            timestep=timestep[rows],
                            encoder_hidden_states=text[rows],
                            encoder_hidden_states_image=clip_batch[rows],
                            audio_embeds=chunk_audio,
                        )
                    latent = euler_step(latent, guidance.combine(velocity), sigma, sigma_next)
                    latent[:, :, :clean_frames] = clean
                    # A pass is seconds long on a GPU; waiting for it costs nothing and keeps progress true.
                    synchronize(self.device)
                    tracker.done(Work.STEP, chunk.index, step + 1)
            chunk_latents.append(latent.float().cpu())
            with timer("vae_decode"):
                piece, motion_latents = decode_chunk(
                    parts.vae,
                    latent,
                    portrait,
                    request.color_correction,
                    keep_from=chunk.keep_from,
                    next_chunk=chunk.index + 1 < len(chunks),
                )
                pieces.append(piece)
                if motion_latents is not None:
                    clean = motion_latents.to(self.dtype)
            tracker.done(Work.DECODE, chunk.index)

        video = torch.cat(pieces, dim=1)[:, : request.frames]
        video = resize_video(video, request.width, request.height)
        return GenerationOutput(video, chunk_latents, (width, height), timer.seconds)

    def _condition(
        self, image: Image.Image, width: int, height: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A reference image → its pixels at the working size, its CLIP tokens and the chunk's ``y``."""
        parts = self.components
        pixels = portrait_tensor(image, width, height).to(self.device)
        clip_tokens = parts.image_encoder(pixels.to(self.dtype))
        y = parts.vae.image_condition(pixels.to(parts.vae_dtype), CHUNK_FRAMES).to(self.dtype)
        return pixels, clip_tokens, y

    def generate_to_file(
        self,
        request: GenerationRequest,
        out_path: str | Path,
        audio_embeddings: torch.Tensor | None = None,
        progress: ProgressCallback | None = None,
    ) -> GenerationOutput:
        """Generate and mux an MP4 whose audio track is the speech, trimmed or padded to N/25 s."""
        tracker = self._tracker(request, progress, writes_output=True)
        output = self._generate(request, audio_embeddings, tracker)
        start = time.perf_counter()
        speech = fit_audio(request.sound(), SPEECH_SAMPLE_RATE, request.frames)
        write_mp4(out_path, to_uint8_frames(output.video), speech, SPEECH_SAMPLE_RATE, FPS)
        output.timings["mux"] = time.perf_counter() - start
        tracker.done(Work.WRITE, len(output.chunk_latents) - 1)
        return output
