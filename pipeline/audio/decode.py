"""Speech input: any container/codec ffmpeg knows → float32 mono 16 kHz; BS.1770 loudness (MODEL.md §1.1-2).

Only numpy, PyAV and pyloudnorm are needed here, so the HTTP ingress can probe uploads without torch.
"""

from __future__ import annotations

import io
import logging
import math
import os
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import pyloudnorm

from pipeline.errors import AudioError

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
LOUDNESS_TARGET_LUFS = -23.0
# pyloudnorm's gating block: shorter clips cannot be measured at all.
LOUDNESS_BLOCK_SECONDS = 0.4
# Container durations are header values (estimated from the bitrate for some MP3s, padded by codec delay for
# Opus), so the early refusal leaves some slack; the exact cap is enforced on the decoded samples.
_DECLARED_DURATION_SLACK = 1.05
# Resampling and codec priming/padding can add a few samples to an exactly-at-the-cap file.
_DECODED_SLACK_SAMPLES = SAMPLE_RATE // 100

_BYTES_LABEL = "audio input"


def decode_audio(
    source: bytes | str | os.PathLike,
    *,
    name: str | None = None,
    max_seconds: float | None = None,
) -> np.ndarray:
    """Decode ``source`` (file contents or a path) to float32 mono samples at 16 kHz.

    ``name`` is what error messages call the input (default: the path, or "audio input" for bytes). Anything
    the caller can fix (not audio, no audio stream, empty, too long, unreadable) raises ``AudioError``.
    ``max_seconds`` is checked against the container's declared duration before decoding, and again while
    decoding, so an hours-long upload is refused after decoding about ``max_seconds`` of it at most.
    """
    if max_seconds is not None and not max_seconds > 0:
        raise ValueError(f"max_seconds must be positive, got {max_seconds!r}")
    label, target = _open_target(source, name)
    try:
        container = av.open(target, mode="r")
    except av.error.FFmpegError as error:
        if isinstance(error, OSError) and not isinstance(error, av.error.InvalidDataError):
            raise AudioError(f"{label}: cannot be read ({_reason(error)})") from None
        raise AudioError(f"{label}: not a decodable audio file ({_reason(error)})") from None
    with container:
        stream = container.streams.best("audio")
        if stream is None:
            raise AudioError(f"{label}: no audio stream (not an audio file?)")
        if max_seconds is not None:
            declared = _declared_seconds(container, stream)
            if declared is not None and declared > max_seconds * _DECLARED_DURATION_SLACK:
                raise AudioError(
                    f"{label}: audio lasts {declared:.1f} s, longer than the {max_seconds:g} s limit"
                )
        samples = _decode_stream(container, stream, label, max_seconds)
    if samples.size == 0:
        raise AudioError(f"{label}: contains no audio samples (empty)")
    return samples


def _open_target(source: bytes | str | os.PathLike, name: str | None) -> tuple[str, io.BytesIO | str]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        label = name or _BYTES_LABEL
        if len(source) == 0:
            raise AudioError(f"{label}: is empty (0 bytes)")
        return label, io.BytesIO(bytes(source))
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"audio source must be bytes or a path, got {type(source).__name__}")
    path = Path(source)
    label = name or str(path)
    if not path.exists():
        raise AudioError(f"{label}: file does not exist")
    if not path.is_file():
        raise AudioError(f"{label}: is not a file")
    if not os.access(path, os.R_OK):
        raise AudioError(f"{label}: cannot be read (permission denied)")
    if path.stat().st_size == 0:
        raise AudioError(f"{label}: is empty (0 bytes)")
    return label, str(path)


def _reason(error: av.error.FFmpegError) -> str:
    # str(error) repeats the errno and the file name; the bare ffmpeg reason is what a user can act on.
    return getattr(error, "strerror", None) or type(error).__name__


def _declared_seconds(container: av.container.InputContainer, stream: av.AudioStream) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def _decode_stream(
    container: av.container.InputContainer,
    stream: av.AudioStream,
    label: str,
    max_seconds: float | None,
) -> np.ndarray:
    limit = None if max_seconds is None else math.ceil(max_seconds * SAMPLE_RATE) + _DECODED_SLACK_SAMPLES
    chunks: list[np.ndarray] = []
    total = 0
    try:
        for chunk in _resampled(container, stream):
            chunks.append(chunk)
            total += chunk.size
            if limit is not None and total > limit:
                raise AudioError(f"{label}: audio is longer than the {max_seconds:g} s limit")
    except (av.error.FFmpegError, ValueError) as error:
        # ValueError: PyAV's resampler refuses a frame whose format changes mid-stream.
        raise AudioError(f"{label}: audio stream cannot be decoded ({_reason(error)})") from None
    if not chunks:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate(chunks).astype(np.float32, copy=False)


def _resampled(container: av.container.InputContainer, stream: av.AudioStream) -> Iterator[np.ndarray]:
    """Yield mono float32 16 kHz chunks; swresample does the downmix and the rate conversion in one pass."""
    resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
    for frame in container.decode(stream):
        for out in resampler.resample(frame):
            yield out.to_ndarray().reshape(-1)
    for out in resampler.resample(None):
        yield out.to_ndarray().reshape(-1)


def normalize_loudness(
    samples: np.ndarray,
    sample_rate: int = SAMPLE_RATE,
    target_lufs: float = LOUDNESS_TARGET_LUFS,
) -> np.ndarray:
    """Scale speech to ``target_lufs`` integrated loudness (ITU-R BS.1770), as the model was trained on.

    Returned unchanged (as float32) when it cannot be measured meaningfully: clips shorter than one 0.4 s
    gating block (skipping is deterministic; zero-padding would bias the measurement low), and silence or
    near-silence (loudness not finite or beyond ±100 LUFS, the reference's rule).
    """
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim != 1:
        raise ValueError(f"expected mono samples of shape (n,), got {samples.shape}")
    if samples.size < math.ceil(LOUDNESS_BLOCK_SECONDS * sample_rate):
        logger.debug("loudness normalisation skipped: %d samples is shorter than one block", samples.size)
        return samples
    meter = pyloudnorm.Meter(sample_rate, block_size=LOUDNESS_BLOCK_SECONDS)
    loudness = meter.integrated_loudness(samples.astype(np.float64))
    if not math.isfinite(loudness) or abs(loudness) > 100:
        logger.debug("loudness normalisation skipped: measured %s LUFS", loudness)
        return samples
    gain = 10.0 ** ((target_lufs - loudness) / 20.0)
    return (samples * np.float32(gain)).astype(np.float32, copy=False)
