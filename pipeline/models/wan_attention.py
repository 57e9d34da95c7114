"""diffusers' Wan attention, with two options: the token-wise work done a slice of tokens at a time
(activation memory) and the self-attention run by another kernel (``pipeline.models.attention_kernels``).

In ``WanAttnProcessor`` everything but the attention itself is a function of one token: the Q/K/V
projections, the q/k RMS norms across heads, RoPE (in fp32), the output projection. At 1280×720 a
whole-sequence pass keeps several 75 600 × 5120 tensors of them alive at once. This processor computes them
``tokens`` at a time: self-attention fills Q, K and V slice by slice and then attends over the whole
sequence once; cross-attention projects the text and image context once and then runs each query slice
through attention and the output projection, since a query's result depends on nothing else. The block's
norm and modulation in front of the attention come in as ``prepare`` and run per slice too. Same
arithmetic per token as diffusers', so the same output up to float rounding (GEMMs of other shapes may round
differently). Whole (``tokens=None``), it computes what ``WanAttnProcessor`` does in the same order.
``InfiniteTalkTransformer3DModel.set_token_chunk`` and ``set_attention_kernel`` install it; with neither
option the model keeps diffusers' own processor, the reference.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.transformers.transformer_wan import (
    WanAttention,
    _get_added_kv_projections,
    _get_qkv_projections,
)

from pipeline.models.attention_kernels import AttentionKernel, attend

# diffusers' Wan attention assumes the text context is the last 512 tokens (the image's 257 come first).
TEXT_TOKENS = 512

TokenFunction = Callable[..., torch.Tensor]


def apply_rotary(hidden_states: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Wan's RoPE on ``[B, L, heads, head_dim]``: each (even, odd) channel pair rotated, in fp32."""
    x1, x2 = hidden_states.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[..., 0::2], sin[..., 1::2]
    out = torch.empty_like(hidden_states)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(hidden_states)


def map_slices(function: TokenFunction, tokens: int | None, *sequences: torch.Tensor) -> torch.Tensor:
    """``function(*sequences)`` for a function of each token alone (dim 1), ``tokens`` tokens at a time,
    written into one output: only a slice's temporaries are ever alive. None: all at once."""
    length = sequences[0].shape[1]
    if tokens is None or length <= tokens:
        return function(*sequences)
    first = function(*(sequence[:, :tokens] for sequence in sequences))
    output = first.new_empty((first.shape[0], length, *first.shape[2:]))
    output[:, :tokens] = first
    del first
    for start in range(tokens, length, tokens):
        output[:, start : start + tokens] = function(
            *(sequence[:, start : start + tokens] for sequence in sequences)
        )
    return output


def _unchanged(part: torch.Tensor) -> torch.Tensor:
    return part


class WanAttentionProcessor:
    """A drop-in processor for ``WanAttention`` (self- and image/text cross-attention, fused or not).

    ``tokens``: slice size of the token-wise work (None: whole). ``kernel``: what runs the self-attention;
    ``sdpa`` goes through diffusers' dispatcher with this processor's backend, as ``WanAttnProcessor`` does.
    """

    _attention_backend = None
    _parallel_config = None

    def __init__(self, tokens: int | None = None, kernel: AttentionKernel = AttentionKernel.SDPA) -> None:
        self.tokens = tokens
        self.kernel = AttentionKernel(kernel)

    def __call__(
        self,
        attn: WanAttention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
        prepare: TokenFunction | None = None,
    ) -> torch.Tensor:
        """``prepare``, a function of each token alone (the block's norm and modulation), is applied to each
        slice of ``hidden_states`` first, so its output never exists for the whole sequence."""
        if attention_mask is not None:
            raise ValueError("the token-chunked Wan attention takes no attention mask")
        prepare = prepare or _unchanged
        if encoder_hidden_states is None:
            return self._self_attention(attn, hidden_states, rotary_emb, prepare)
        return self._cross_attention(attn, hidden_states, encoder_hidden_states, prepare)

    def _attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        out = dispatch_attention_fn(
            query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, backend=self._attention_backend
        )
        return out.flatten(2, 3).type_as(query)

    def _self_attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        if self.kernel is AttentionKernel.SDPA:
            return self._attend(query, key, value)
        return attend(query, key, value, self.kernel).flatten(2, 3).type_as(query)

    def _self_attention(
        self,
        attn: WanAttention,
        hidden_states: torch.Tensor,
        rotary_emb: tuple[torch.Tensor, torch.Tensor] | None,
        prepare: TokenFunction,
    ) -> torch.Tensor:
        if rotary_emb is None:
            raise ValueError("Wan self-attention needs its rotary embedding")
        cos, sin = rotary_emb

        def project(
            part: torch.Tensor, part_cos: torch.Tensor, part_sin: torch.Tensor
        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            query, key, value = _get_qkv_projections(attn, prepare(part), None)
            query = apply_rotary(attn.norm_q(query).unflatten(2, (attn.heads, -1)), part_cos, part_sin)
            key = apply_rotary(attn.norm_k(key).unflatten(2, (attn.heads, -1)), part_cos, part_sin)
            return query, key, value.unflatten(2, (attn.heads, -1))

        if self.tokens is None or hidden_states.shape[1] <= self.tokens:
            query, key, value = project(hidden_states, cos, sin)
        else:
            stacked = map_slices(
                lambda *parts: torch.stack(project(*parts), dim=2), self.tokens, hidden_states, cos, sin
            )
            query, key, value = stacked.unbind(2)
            del stacked  # the views alone keep Q, K and V alive, until they are deleted below
        out = self._self_attend(query, key, value)
        del query, key, value
        return map_slices(lambda part: attn.to_out[1](attn.to_out[0](part)), self.tokens, out)

    def _cross_attention(
        self, attn: WanAttention, hidden_states: torch.Tensor, context: torch.Tensor, prepare: TokenFunction
    ) -> torch.Tensor:
        image_context: torch.Tensor | None = None
        if attn.add_k_proj is not None:
            image_context, context = context[:, :-TEXT_TOKENS], context[:, -TEXT_TOKENS:]
        if attn.fused_projections:
            key, value = attn.to_kv(context).chunk(2, dim=-1)
        else:
            key, value = attn.to_k(context), attn.to_v(context)
        key = attn.norm_k(key).unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))
        image_kv: tuple[torch.Tensor, torch.Tensor] | None = None
        if image_context is not None:
            key_image, value_image = _get_added_kv_projections(attn, image_context)
            image_kv = (
                attn.norm_added_k(key_image).unflatten(2, (attn.heads, -1)),
                value_image.unflatten(2, (attn.heads, -1)),
            )

        def attend_slice(part: torch.Tensor) -> torch.Tensor:
            query = attn.norm_q(attn.to_q(prepare(part))).unflatten(2, (attn.heads, -1))
            out = self._attend(query, key, value)
            if image_kv is not None:
                out = out + self._attend(query, *image_kv)
            return attn.to_out[1](attn.to_out[0](out))

        return map_slices(attend_slice, self.tokens, hidden_states)
