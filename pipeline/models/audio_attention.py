"""The audio cross-attention each DiT block adds after its text/image cross-attention (MODEL.md §2).

Every latent frame's video tokens attend only to that frame's audio tokens, so the video sequence is folded
into the batch, frame by frame, and the attention itself goes through diffusers' dispatcher: whatever
backend ``set_attention_backend`` or the ``attention_backend`` context selects (SDPA, flash, sage, ...) runs
it. With two speakers (``positions`` given) queries and keys are first rotated by the reference's 1-D RoPE
(``pipeline.models.speakers``); with one, nothing of that is computed.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from diffusers.models.attention import AttentionModuleMixin
from diffusers.models.attention_dispatch import dispatch_attention_fn
from torch import nn

from pipeline.models.speakers import SPEAKERS, audio_token_positions, rotate_1d


class AudioAttnProcessor:
    """Holds the attention backend, as diffusers' processors do, so ``set_attention_backend`` reaches it."""

    _attention_backend = None
    _parallel_config = None

    def __call__(
        self,
        attn: AudioCrossAttention,
        hidden_states: torch.Tensor,
        audio_tokens: torch.Tensor,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        batch, sequence, dim = hidden_states.shape
        frames, tokens = audio_tokens.shape[1], audio_tokens.shape[2]
        if sequence % frames:
            raise ValueError(f"{sequence} video tokens do not split into {frames} latent frames")
        # [B, F·S, d] → [B·F, S, heads, head_dim]: tokens are frame-major, so this is a view.
        query = attn.q_linear(hidden_states).view(batch * frames, sequence // frames, attn.heads, -1)
        # kv_linear's output is K then V, each laid out head by head (the reference's view (.., 2, H, D)).
        key, value = attn.kv_linear(audio_tokens).chunk(2, dim=-1)
        key = key.reshape(batch * frames, tokens, attn.heads, -1)
        value = value.reshape(batch * frames, tokens, attn.heads, -1)
        if positions is not None:
            query = rotate_1d(query, positions.reshape(batch * frames, sequence // frames))
            key = rotate_1d(key, audio_token_positions(tokens // SPEAKERS, key.device))
        out = dispatch_attention_fn(
            query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, backend=self._attention_backend
        )
        out = out.reshape(batch, sequence, dim).type_as(query)
        return attn.proj(out)


class AudioCrossAttention(nn.Module, AttentionModuleMixin):
    """``q_linear``, ``kv_linear``, ``proj``: the official ``audio_cross_attn`` names; no q/k norm."""

    _default_processor_cls = AudioAttnProcessor
    _available_processors: ClassVar[list[type]] = [AudioAttnProcessor]
    # kv_linear is fused already and there is no to_q/to_k/to_v for diffusers' fusion to act on.
    _supports_qkv_fusion = False

    def __init__(self, dim: int, audio_dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.q_linear = nn.Linear(dim, dim)
        self.kv_linear = nn.Linear(audio_dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.set_processor(AudioAttnProcessor())

    def forward(
        self, hidden_states: torch.Tensor, audio_tokens: torch.Tensor, positions: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``[B, F·h·w, d]`` video tokens, ``[B, F, tokens, audio_dim]`` audio tokens → ``[B, F·h·w, d]``.

        ``positions`` ``[B, F·h·w]``: two speakers, each video token's place on the rotary axis (the audio
        tokens are then both speakers' 32, speaker 1's first)."""
        return self.processor(self, hidden_states, audio_tokens, positions)
