"""Output: frames + speech → an H.264/AAC MP4 that browsers play (yuv420p, faststart)."""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F

from pipeline.streaming import FPS

_AAC_BITRATE = 128_000
_X264_OPTIONS = {"crf": "18", "preset": "veryfast", "profile": "high"}


def to_uint8_frames(video: torch.Tensor) -> np.ndarray:
    """``[3, F, H, W]`` in [−1, 1] → ``[F, H, W, 3]`` uint8."""
    pixels = ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return pixels.permute(1, 2, 3, 0).contiguous().cpu().numpy()


def resize_video(video: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Resize ``[3, F, H, W]`` frames to exactly ``height × width`` (identity when already that size)."""
    if video.shape[-2:] == (height, width):
        return video
    frames = video.permute(1, 0, 2, 3).float()
    resized = F.interpolate(
        frames, size=(height, width), mode="bilinear", align_corners=False, antialias=True
    )
    return resized.permute(1, 0, 2, 3).to(video.dtype)


def fit_audio(samples: np.ndarray, sample_rate: int, frames: int, fps: int = FPS) -> np.ndarray:
    """Trim, or pad with silence, so the speech lasts exactly as long as ``frames`` of video."""
    target = round(frames * sample_rate / fps)
    if len(samples) >= target:
        return samples[:target]
    return np.concatenate([samples, np.zeros(target - len(samples), dtype=samples.dtype)])


def write_mp4(
    path: str | os.PathLike,
    frames: np.ndarray,
    audio: np.ndarray,
    sample_rate: int,
    fps: int = FPS,
) -> Path:
    """Mux uint8 ``[F, H, W, 3]`` frames and mono float audio; written to a temp name, then renamed.

    The rename means a reader (or a retried job writing the same path) never sees a half-written file.
    """
    path = Path(path)
    height, width = frames.shape[1:3]
    if height % 2 or width % 2:
        raise ValueError(f"yuv420p needs even dimensions, got {width}x{height}")
    partial = path.with_name(f".{path.name}.partial")
    with av.open(str(partial), mode="w", format="mp4", options={"movflags": "+faststart"}) as container:
        video_stream = container.add_stream("libx264", rate=fps, options=_X264_OPTIONS)
        video_stream.width, video_stream.height = width, height
        video_stream.pix_fmt = "yuv420p"
        video_stream.time_base = Fraction(1, fps)
        audio_stream = container.add_stream("aac", rate=sample_rate, layout="mono")
        audio_stream.bit_rate = _AAC_BITRATE

        for index, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = index
            container.mux(video_stream.encode(frame))
        container.mux(video_stream.encode())

        mono = np.ascontiguousarray(audio, dtype=np.float32).reshape(1, -1)
        audio_frame = av.AudioFrame.from_ndarray(mono, format="flt", layout="mono")
        audio_frame.sample_rate = sample_rate
        audio_frame.pts = 0
        audio_frame.time_base = Fraction(1, sample_rate)
        container.mux(audio_stream.encode(audio_frame))
        container.mux(audio_stream.encode())
    os.replace(partial, path)
    return path
