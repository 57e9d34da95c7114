"""Per-frame audio context windows and the fill past the end of the audio (MODEL.md §1.5-6)."""

from __future__ import annotations

import torch

AUDIO_WINDOW = 5


def window_audio_embeddings(embeddings: torch.Tensor, window: int = AUDIO_WINDOW) -> torch.Tensor:
    """``[n, L, C]`` → ``[n, window, L, C]``: frame i sees frames i−window//2 … i+window//2.

    Indices are clamped to ``[0, n−1]``: the first and last frames repeat at the edges, as in the reference.
    """
    if embeddings.ndim != 3:
        raise ValueError(f"embeddings must be [frames, layers, channels], got {tuple(embeddings.shape)}")
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window must be a positive odd number, got {window}")
    n = embeddings.shape[0]
    if n == 0:
        raise ValueError("embeddings must hold at least one frame")
    half = window // 2
    offsets = torch.arange(-half, half + 1, device=embeddings.device)
    indices = (torch.arange(n, device=embeddings.device)[:, None] + offsets[None, :]).clamp(0, n - 1)
    return embeddings[indices]


def pad_embeddings_to(embeddings: torch.Tensor, n_total: int) -> torch.Tensor:
    """Extend ``[n, ...]`` embeddings to exactly ``n_total`` frames for a last chunk that runs past the audio.

    The fill is the reference's: the audio played backwards from its end (frame n+k copies frame n−1−k),
    bouncing back and forth if more than n frames are missing. It needs no encoder and keeps the motion
    natural; those frames are trimmed from the output anyway. Longer inputs are cut to ``n_total``.
    """
    n = embeddings.shape[0]
    if n == 0:
        raise ValueError("embeddings must hold at least one frame")
    if n_total < 1:
        raise ValueError(f"n_total must be at least 1, got {n_total}")
    if n_total <= n:
        return embeddings[:n_total]
    position = torch.arange(n_total, device=embeddings.device) % (2 * n)
    indices = torch.where(position < n, position, 2 * n - 1 - position)
    return embeddings[indices]
