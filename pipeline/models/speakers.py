"""Two speakers in one video (MODEL.md §2): which speaker each video token belongs to, and where the audio
cross-attention's 1-D rotary embedding places it.

The reference decides per DiT block, from that block's self-attention: every video token's attention
probabilities over the tokens of latent frame 0 (the reference frame), averaged over each speaker's mask
(the face box, or the left / right half of the portrait) and over all heads, give a ``[3, L]`` map (speaker
1, speaker 2, background). A token of class ``c`` (the argmax) gets a position in that class's range on a
24-wide axis, by how strongly it attends to the class's region: speaker 1 in [0, 4], speaker 2 in [20, 24],
background at 12. The audio keys sit at the centres of the speakers' ranges (2 and 22), so a token of
speaker 1 is near speaker 1's 32 audio tokens and far from speaker 2's.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

SPEAKERS = 2
# (low, high) of each speaker's range on the rotary axis, and where background tokens sit.
SPEAKER_RANGES = ((0.0, 4.0), (20.0, 24.0))
BACKGROUND_POSITION = 12.0
ROPE_BASE = 10000.0
_EPS = 1e-8


def token_masks(masks: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``[3, H, W]`` masks (speaker 1, speaker 2, background) at any size → ``[3, h·w]`` float masks on the
    token grid, resized by nearest neighbour and binarised, as the reference does."""
    if masks.ndim != 3 or masks.shape[0] != SPEAKERS + 1:
        raise ValueError(f"speaker masks must be [3, height, width], got {list(masks.shape)}")
    resized = F.interpolate(masks[None].float(), size=grid, mode="nearest")[0]
    return (resized > 0).flatten(1).float()


def speaker_map(query: torch.Tensor, key: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """``[B, 3, L]``: each token's mean attention probability over each mask's reference-frame tokens,
    averaged over heads.

    ``query`` ``[B, L, heads, D]`` (all video tokens) and ``key`` ``[B, R, heads, D]`` (the R tokens of latent
    frame 0), both after the self-attention's norms and RoPE; ``masks`` ``[3, R]`` from ``token_masks``.
    One head at a time, so only an ``L × R`` matrix is ever alive (the reference holds half the heads).
    """
    heads, dim = query.shape[2], query.shape[3]
    weights = masks.to(torch.float32) / masks.sum(dim=1, keepdim=True).clamp_min(1.0)  # [3, R]
    total = query.new_zeros((query.shape[0], query.shape[1], masks.shape[0]), dtype=torch.float32)
    for head in range(heads):
        logits = query[:, :, head].float() @ key[:, :, head].float().transpose(1, 2) / math.sqrt(dim)
        total += logits.softmax(dim=-1) @ weights.T  # [B, L, 3]
    return (total / heads).transpose(1, 2)


def token_positions(speaker_map: torch.Tensor) -> torch.Tensor:
    """``[B, 3, L]`` map → ``[B, L]`` positions on the rotary axis (see the module's description)."""
    positions = speaker_map.new_full(speaker_map[:, 0].shape, BACKGROUND_POSITION)
    in_range = []
    for speaker, (low, high) in enumerate(SPEAKER_RANGES):
        row = speaker_map[:, speaker]
        lowest = row.amin(dim=-1, keepdim=True)
        highest = row.amax(dim=-1, keepdim=True)
        in_range.append((row - lowest) / (highest - lowest + _EPS) * (high - low) + low)
    owner = speaker_map.argmax(dim=1)
    for speaker, placed in enumerate(in_range):
        positions = torch.where(owner == speaker, placed, positions)
    return positions


def audio_token_positions(tokens_per_speaker: int, device: torch.device) -> torch.Tensor:
    """``[2·tokens]``: each speaker's audio tokens at the centre of its range (2 and 22)."""
    centres = torch.tensor([(low + high) / 2 for low, high in SPEAKER_RANGES], device=device)
    return centres.repeat_interleave(tokens_per_speaker)


def rotate_1d(hidden_states: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """The reference's 1-D RoPE on ``[N, S, heads, D]`` at ``positions`` ``[N, S]`` (or ``[S]``): channel
    pairs (2i, 2i+1) rotated by ``position · 10000^(−2i/D)``, in fp32."""
    dim = hidden_states.shape[-1]
    frequencies = ROPE_BASE ** (
        -torch.arange(0, dim, 2, device=hidden_states.device, dtype=torch.float32) / dim
    )
    angles = positions.to(torch.float32)[..., None] * frequencies  # [.., S, D/2]
    cos, sin = angles.cos()[..., None, :], angles.sin()[..., None, :]  # broadcast over heads
    even, odd = hidden_states.float().unflatten(-1, (-1, 2)).unbind(-1)
    rotated = torch.stack([even * cos - odd * sin, odd * cos + even * sin], dim=-1).flatten(-2)
    return rotated.type_as(hidden_states)
