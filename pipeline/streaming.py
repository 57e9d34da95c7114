"""Chunk arithmetic of the streaming long-video loop (MODEL.md §6)."""

from __future__ import annotations

import math
from dataclasses import dataclass

CHUNK_FRAMES = 81
MOTION_FRAMES = 9
FPS = 25
VAE_TEMPORAL_STRIDE = 4
VAE_SPATIAL_STRIDE = 8
PATCH_SPATIAL = 2


# The reference's longest streamed video (``max_frame_num``): 40 s.
DEFAULT_MAX_SPEECH_FRAMES = 1000


def speech_frame_count(seconds: float, max_frames: int = DEFAULT_MAX_SPEECH_FRAMES) -> int:
    """The frames of a video as long as a speech, as the reference counts them: the whole frames at 25 fps
    the speech covers (``int(seconds × 25)``), at most ``max_frames`` (a longer speech is cut there)."""
    return min(int(seconds * FPS), max_frames)


def latent_frames(video_frames: int) -> int:
    """Latent frames for a clip: the first frame alone, then one per 4 frames (81 → 21, 9 → 3)."""
    return 1 + (video_frames - 1) // VAE_TEMPORAL_STRIDE


@dataclass(frozen=True)
class Chunk:
    """One 81-frame window of the output.

    ``start`` is the first video frame the chunk covers; frames ``keep_from..`` of its decode are new output
    (the first ``MOTION_FRAMES`` of a later chunk repeat the previous chunk's tail).
    """

    index: int
    start: int
    keep_from: int

    @property
    def end(self) -> int:
        return self.start + CHUNK_FRAMES


def chunk_count(frames: int) -> int:
    """``1 + ceil((N − 81) / 72)`` chunks, at least one: 125 → 2, 250 → 4."""
    if frames < 1:
        raise ValueError(f"frames must be positive, got {frames}")
    if frames <= CHUNK_FRAMES:
        return 1
    return 1 + math.ceil((frames - CHUNK_FRAMES) / (CHUNK_FRAMES - MOTION_FRAMES))


def plan_chunks(frames: int) -> list[Chunk]:
    stride = CHUNK_FRAMES - MOTION_FRAMES
    return [
        Chunk(index=k, start=k * stride, keep_from=0 if k == 0 else MOTION_FRAMES)
        for k in range(chunk_count(frames))
    ]


def covered_frames(frames: int) -> int:
    """Video frames the chunks generate before the output is trimmed to ``frames``."""
    return plan_chunks(frames)[-1].end
