"""Video-to-video dubbing's source: probing a video, choosing its size, and reading one frame per chunk.

Each chunk of the output takes its reference frame from the source at that chunk's start (MODEL.md §6),
chosen by time: chunk ``k`` starts ``72·k / 25`` s into the output and takes the source frame on screen then.
For a 25 fps source that is frame ``72·k``, the frame the reference implementation indexes; for other rates
the reference indexes frames regardless of time and drifts, where this keeps the source's timing. Past the
source's end, every chunk takes its last frame (the video is as long as the speech, not as the source).

Only PyAV, numpy and Pillow are needed, so the HTTP ingress can probe uploads without torch. Only the frames
asked for are kept; the rest are decoded and dropped, so memory stays at one frame whatever the length.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import av
from PIL import Image

from pipeline.errors import VideoError
from pipeline.streaming import FPS, plan_chunks

#: The largest working area (pixels) a dubbed video keeps; a larger source is scaled down to it.
MAX_DUBBING_AREA = 1280 * 720
MIN_SIDE = 16
_BYTES_LABEL = "video input"


@dataclass(frozen=True)
class SourceVideo:
    """What a probe tells about a source video: its frame size, and its duration when the file states one."""

    width: int
    height: int
    duration_seconds: float | None


def probe_video(
    source: bytes | str | os.PathLike,
    *,
    name: str | None = None,
    max_seconds: float | None = None,
    max_pixels: int | None = None,
) -> SourceVideo:
    """Check ``source`` holds a video stream whose first frame decodes; its size and declared duration.

    Refused with ``VideoError`` (naming ``name``): not a media file, no video stream, no decodable frame,
    declared longer than ``max_seconds``, frames larger than ``max_pixels`` or smaller than 16 pixels a side.
    """
    label, target = _open_target(source, name)
    with _opened(target, label) as container:
        stream = _video_stream(container, label)
        duration = _declared_seconds(container, stream)
        if max_seconds is not None and duration is not None and duration > max_seconds:
            raise VideoError(
                f"{label}: video lasts {duration:.1f} s, longer than the {max_seconds:g} s limit"
            )
        first = next(_decoded(container, stream, label), None)
    if first is None:
        raise VideoError(f"{label}: contains no decodable video frame")
    width, height = _upright(first).size
    if min(width, height) < MIN_SIDE:
        raise VideoError(f"{label}: frames are {width}x{height}, smaller than {MIN_SIDE} pixels a side")
    if max_pixels is not None and width * height > max_pixels:
        raise VideoError(f"{label}: frames are {width}x{height}, more than {max_pixels} pixels")
    return SourceVideo(width=width, height=height, duration_seconds=duration)


def dubbing_size(width: int, height: int, max_area: int = MAX_DUBBING_AREA) -> tuple[int, int]:
    """The output size for a ``width × height`` source: the same when it fits ``max_area``, else scaled down
    to fit keeping the aspect ratio; even sides either way (H.264's 4:2:0 needs them)."""
    scale = min(1.0, math.sqrt(max_area / (width * height)))
    return _even(width * scale), _even(height * scale)


def frames_at(
    source: bytes | str | os.PathLike, times: Sequence[float], *, name: str | None = None
) -> list[Image.Image]:
    """The RGB frame (upright) on screen at each of ``times`` (seconds, ascending): the last frame shown at
    or before it, the first frame for a time before it, the last frame for a time past the end."""
    if list(times) != sorted(times):
        raise ValueError("times must be ascending")
    label, target = _open_target(source, name)
    chosen: list[Image.Image] = []
    with _opened(target, label) as container:
        stream = _video_stream(container, label)
        shown: av.VideoFrame | None = None
        for frame in _decoded(container, stream, label):
            start = frame.time if frame.time is not None else 0.0
            while shown is not None and len(chosen) < len(times) and start > times[len(chosen)]:
                chosen.append(_upright(shown))
            if len(chosen) == len(times):
                break
            shown = frame
    if shown is None:
        raise VideoError(f"{label}: contains no decodable video frame")
    last = _upright(shown)
    return chosen + [last] * (len(times) - len(chosen))


def chunk_references(
    source: bytes | str | os.PathLike, frames: int, *, name: str | None = None
) -> tuple[Image.Image, ...]:
    """The source frame each chunk of a ``frames``-long output is conditioned on: the one at its start."""
    return tuple(frames_at(source, [chunk.start / FPS for chunk in plan_chunks(frames)], name=name))


def _upright(frame: av.VideoFrame) -> Image.Image:
    """The frame as shown: phones record sideways and store the turn as a display matrix."""
    image = frame.to_image()
    turn = round(frame.rotation / 90) * 90 % 360 if frame.rotation else 0
    return image.rotate(turn, expand=True) if turn else image


def _even(value: float) -> int:
    return max(MIN_SIDE, int(value) // 2 * 2)


def _open_target(source: bytes | str | os.PathLike, name: str | None) -> tuple[str, io.BytesIO | str]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        label = name or _BYTES_LABEL
        if len(source) == 0:
            raise VideoError(f"{label}: is empty (0 bytes)")
        return label, io.BytesIO(bytes(source))
    path = Path(source)
    label = name or str(path)
    if not path.is_file():
        raise VideoError(f"{label}: no such file")
    return label, str(path)


@contextlib.contextmanager
def _opened(target: io.BytesIO | str, label: str) -> Iterator[av.container.InputContainer]:
    """``av.open`` with every way it refuses a file as a ``VideoError`` naming the input."""
    try:
        container = av.open(target, mode="r")
    except av.error.FFmpegError as error:
        raise VideoError(f"{label}: not a decodable video file ({_reason(error)})") from None
    with container:
        yield container


def _video_stream(container: av.container.InputContainer, label: str) -> av.VideoStream:
    # ffmpeg reads a PNG or JPEG as a one-frame video (its image2 and *_pipe demuxers): not a source to dub.
    if container.format.name == "image2" or container.format.name.endswith("_pipe"):
        raise VideoError(f"{label}: is a still image, not a video")
    stream = container.streams.best("video")
    if stream is None:
        raise VideoError(f"{label}: no video stream (not a video file?)")
    stream.thread_type = "AUTO"
    return stream


def _decoded(
    container: av.container.InputContainer, stream: av.VideoStream, label: str
) -> Iterator[av.VideoFrame]:
    try:
        yield from container.decode(stream)
    except (av.error.FFmpegError, ValueError) as error:
        raise VideoError(f"{label}: video stream cannot be decoded ({_reason(error)})") from None


def _declared_seconds(container: av.container.InputContainer, stream: av.VideoStream) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def _reason(error: av.error.FFmpegError) -> str:
    return getattr(error, "strerror", None) or type(error).__name__
