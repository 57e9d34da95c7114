"""Two people in one portrait (issue 15): who speaks when, where each one is, and the mixed sound track.

The reference (``audio_type``) has two arrangements, which the API names by speaking order:

* ``meanwhile`` (``para``): both tracks play from the start (the shorter one is padded with silence here;
  the reference requires equal lengths);
* ``left_right`` (``add``): the left person speaks first, then the right one, straight after;
* ``right_left``: the same with the right person first.

Each person's track is as long as the whole video, silent where the other speaks, and is encoded by
wav2vec2 on its own. The video's sound is the two tracks' sum, each loudness-normalised first, as the
reference mixes them.

Where each person is: a box per speaker ``(left, top, right, bottom)`` in pixels of the portrait as given,
or by default the reference's: the left and right halves, inset by 5 %. The boxes become ``[3, h, w]``
masks (speaker 1 = left, speaker 2 = right, background) on the latent grid, through the same cover-and-crop
the portrait takes to the working size.
"""

from __future__ import annotations

from enum import StrEnum

import numpy as np
import torch

from pipeline.audio import normalize_loudness
from pipeline.boxes import Box

# The reference's inset of the default halves (``face_scale``).
HALF_INSET = 0.05


class SpeakingOrder(StrEnum):
    MEANWHILE = "meanwhile"
    LEFT_RIGHT = "left_right"
    RIGHT_LEFT = "right_left"


def default_boxes(image_size: tuple[int, int]) -> tuple[Box, Box]:
    """The reference's layout without boxes: the left and the right half, each inset by 5 %."""
    width, height = image_size
    half = width / 2
    top, bottom = height * HALF_INSET, height * (1 - HALF_INSET)
    return (
        Box(half * HALF_INSET, top, half * (1 - HALF_INSET), bottom),
        Box(half + half * HALF_INSET, top, half + half * (1 - HALF_INSET), bottom),
    )


def arrange_speech(
    left: np.ndarray, right: np.ndarray, order: SpeakingOrder
) -> tuple[np.ndarray, np.ndarray]:
    """The two speakers' tracks laid out in time, of equal length (see the module's description)."""
    order = SpeakingOrder(order)
    left, right = left.astype(np.float32), right.astype(np.float32)
    if order is SpeakingOrder.MEANWHILE:
        length = max(len(left), len(right))
        return _pad_to(left, length), _pad_to(right, length)
    first, second = (left, right) if order is SpeakingOrder.LEFT_RIGHT else (right, left)
    first_track = np.concatenate([first, np.zeros_like(second)])
    second_track = np.concatenate([np.zeros_like(first), second])
    return (first_track, second_track) if order is SpeakingOrder.LEFT_RIGHT else (second_track, first_track)


def _pad_to(samples: np.ndarray, length: int) -> np.ndarray:
    return np.concatenate([samples, np.zeros(length - len(samples), dtype=samples.dtype)])


def mix_speech(tracks: tuple[np.ndarray, np.ndarray], sample_rate: int) -> np.ndarray:
    """The sound of the video: both arranged tracks loudness-normalised, summed, kept within [−1, 1]."""
    mixed = sum(normalize_loudness(track, sample_rate) for track in tracks)
    return np.clip(mixed, -1.0, 1.0).astype(np.float32)


def speaker_masks(
    image_size: tuple[int, int],
    boxes: tuple[Box, Box] | None,
    working_size: tuple[int, int],
    latent_size: tuple[int, int],
) -> torch.Tensor:
    """``[3, latent_h, latent_w]`` masks (speaker 1, speaker 2, background): each latent cell belongs to a
    speaker when its centre, mapped back through the portrait's cover-and-crop, lies in that speaker's box."""
    boxes = boxes or default_boxes(image_size)
    for name, box in zip(("left speaker", "right speaker"), boxes, strict=True):
        box.check(name, image_size)
    source_width, source_height = image_size
    width, height = working_size
    latent_height, latent_width = latent_size
    scale = max(width / source_width, height / source_height)
    left = (source_width - width / scale) / 2
    top = (source_height - height / scale) / 2
    # Centres of the latent cells, in the portrait's own pixels.
    xs = left + (torch.arange(latent_width) + 0.5) * (width / latent_width) / scale
    ys = top + (torch.arange(latent_height) + 0.5) * (height / latent_height) / scale
    masks = [
        ((ys >= box.top) & (ys < box.bottom))[:, None] & ((xs >= box.left) & (xs < box.right))[None, :]
        for box in boxes
    ]
    background = ~(masks[0] | masks[1])
    return torch.stack([*masks, background]).float()
