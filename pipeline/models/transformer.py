"""The InfiniteTalk DiT: diffusers' Wan2.1 I2V transformer plus the audio adapter (MODEL.md §2-3).

Everything of Wan2.1 is diffusers' own (patch embedding, RoPE, condition embedder, attention, FFN, output
head), so weights converted from the official layout give diffusers' verified numerics. Added: ``audio_proj``
at model level, and in every block ``norm_x`` + ``audio_cross_attn`` between the text/image cross-attention
and the FFN, as a plain residual (no modulation, no gate). With two speakers (the multi checkpoint: the same
keys), each block also places its video tokens between the speakers from its own self-attention's queries
and keys (``pipeline.models.speakers``); with one, none of that runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
from diffusers.configuration_utils import register_to_config
from diffusers.models.normalization import FP32LayerNorm
from diffusers.models.transformers.transformer_wan import (
    WanAttention,
    WanAttnProcessor,
    WanTransformer3DModel,
    WanTransformerBlock,
)

from pipeline.models.attention_kernels import AttentionKernel
from pipeline.models.audio_adapter import AudioProjModel
from pipeline.models.audio_attention import AudioCrossAttention
from pipeline.models.speakers import SPEAKERS, speaker_map, token_masks, token_positions
from pipeline.models.wan_attention import TEXT_TOKENS, WanAttentionProcessor, apply_rotary, map_slices


def _query_and_reference_key(
    attn: WanAttention, hidden_states: torch.Tensor, reference_tokens: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The self-attention's normed queries of every token and keys of the first ``reference_tokens`` (latent
    frame 0), ``[B, L, heads, D]`` and ``[B, R, heads, D]``, before RoPE."""
    reference = hidden_states[:, :reference_tokens]
    if attn.fused_projections:
        query = attn.to_qkv(hidden_states).chunk(3, dim=-1)[0]
        key = attn.to_qkv(reference).chunk(3, dim=-1)[1]
    else:
        query, key = attn.to_q(hidden_states), attn.to_k(reference)
    return (
        attn.norm_q(query).unflatten(2, (attn.heads, -1)),
        attn.norm_k(key).unflatten(2, (attn.heads, -1)),
    )


def check_token_chunk(tokens: object) -> None:
    if tokens is not None and (isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1):
        raise ValueError(f"token chunk must be a positive integer or None, got {tokens!r}")


class InfiniteTalkTransformerBlock(WanTransformerBlock):
    #: Tokens per slice for the token-wise parts of the block (norms, modulation, residuals, FFN; its
    #: attention processors get the same); None runs each over the whole sequence at once. Set through
    #: ``InfiniteTalkTransformer3DModel.set_token_chunk``.
    token_chunk: int | None = None

    def __init__(
        self,
        dim: int,
        ffn_dim: int,
        num_heads: int,
        qk_norm: str | None,
        cross_attn_norm: bool,
        eps: float,
        added_kv_proj_dim: int | None,
        audio_token_dim: int,
    ) -> None:
        super().__init__(dim, ffn_dim, num_heads, qk_norm, cross_attn_norm, eps, added_kv_proj_dim)
        self.norm_x = FP32LayerNorm(dim, eps, elementwise_affine=True)
        self.audio_cross_attn = AudioCrossAttention(dim, audio_token_dim, num_heads)

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        temb: torch.Tensor,
        rotary_emb: tuple[torch.Tensor, torch.Tensor],
        audio_tokens: torch.Tensor,
        speaker_masks: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """diffusers' Wan2.1 block step for step, with the audio residual inserted before the FFN.

        ``speaker_masks`` ``[3, R]`` (two speakers, on the token grid of one latent frame): the audio
        attention places each token between the speakers by this block's self-attention."""
        shift_msa, scale_msa, gate_msa, c_shift_msa, c_scale_msa, c_gate_msa = (
            self.scale_shift_table + temb.float()
        ).chunk(6, dim=1)

        def self_attention_input(x: torch.Tensor) -> torch.Tensor:
            return (self.norm1(x.float()) * (1 + scale_msa) + shift_msa).type_as(x)

        def gated_residual(x: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
            return (x.float() + update * gate_msa).type_as(x)

        def cross_attention_input(x: torch.Tensor) -> torch.Tensor:
            return self.norm2(x.float()).type_as(x)

        def feed_forward(x: torch.Tensor) -> torch.Tensor:
            norm_x = (self.norm3(x.float()) * (1 + c_scale_msa) + c_shift_msa).type_as(x)
            return (x.float() + self.ffn(norm_x).float() * c_gate_msa).type_as(x)

        positions = None
        if speaker_masks is not None:
            positions = self._speaker_positions(
                self_attention_input(hidden_states), rotary_emb, speaker_masks
            )
        attn_output = self._attention(self.attn1, self_attention_input, hidden_states, None, rotary_emb)
        hidden_states = self._tokenwise(gated_residual, hidden_states, attn_output)
        del attn_output
        attn_output = self._attention(
            self.attn2, cross_attention_input, hidden_states, encoder_hidden_states, None
        )
        hidden_states = hidden_states + attn_output
        del attn_output
        hidden_states = self._audio_residual(hidden_states, audio_tokens, positions)
        return self._tokenwise(feed_forward, hidden_states)

    def _speaker_positions(
        self,
        normed: torch.Tensor,
        rotary_emb: tuple[torch.Tensor, torch.Tensor],
        masks: torch.Tensor,
    ) -> torch.Tensor:
        """``[B, L]``: each token's place between the speakers, from this block's self-attention queries
        and reference-frame keys (after RoPE), as the reference computes it in every block. The projections
        are computed again here rather than taken out of the attention processor, so the attention kernels
        and token chunking stay untouched; it costs two thirds of a Q/K/V projection per block, and only
        with two speakers."""
        reference_tokens = masks.shape[1]
        query, key = _query_and_reference_key(self.attn1, normed, reference_tokens)
        cos, sin = rotary_emb
        query = apply_rotary(query, cos, sin)
        key = apply_rotary(key, cos[:, :reference_tokens], sin[:, :reference_tokens])
        return token_positions(speaker_map(query, key, masks))

    def _audio_residual(
        self, hidden_states: torch.Tensor, audio_tokens: torch.Tensor, positions: torch.Tensor | None
    ) -> torch.Tensor:
        """``x + audio_cross_attn(norm_x(x))``; chunked, whole latent frames at a time (each frame's tokens
        attend to that frame's audio tokens only, so frames are independent)."""

        def residual(
            x: torch.Tensor, audio: torch.Tensor, places: torch.Tensor | None = None
        ) -> torch.Tensor:
            return x + self.audio_cross_attn(self.norm_x(x), audio, places)

        if self.token_chunk is None:
            return residual(hidden_states, audio_tokens, positions)
        frames = audio_tokens.shape[1]
        per_frame = hidden_states.shape[1] // frames  # whole: the model checks its inputs' shapes

        def frame_residual(
            x: torch.Tensor, audio: torch.Tensor, places: torch.Tensor | None = None
        ) -> torch.Tensor:  # x: [B, f, S, d], places: [B, f, S]
            flat_places = None if places is None else places.flatten(1, 2)
            return residual(x.flatten(1, 2), audio, flat_places).unflatten(1, (-1, per_frame))

        by_frame = hidden_states.unflatten(1, (frames, per_frame))
        frames_per_slice = max(1, self.token_chunk // per_frame)
        sequences = [by_frame, audio_tokens]
        if positions is not None:
            sequences.append(positions.unflatten(1, (frames, per_frame)))
        return map_slices(frame_residual, frames_per_slice, *sequences).flatten(1, 2)

    def _attention(
        self,
        attention: torch.nn.Module,
        prepare: Callable[[torch.Tensor], torch.Tensor],
        hidden_states: torch.Tensor,
        context: torch.Tensor | None,
        rotary_emb: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> torch.Tensor:
        """``attention(prepare(hidden_states), ...)``; chunked, the processor prepares each slice itself."""
        if self.token_chunk is None:
            return attention(prepare(hidden_states), context, None, rotary_emb)
        return attention(hidden_states, context, None, rotary_emb, prepare=prepare)

    def _tokenwise(self, function: Callable[..., torch.Tensor], *sequences: torch.Tensor) -> torch.Tensor:
        """``function(*sequences)``, a function of each token alone, ``token_chunk`` tokens at a time."""
        if self.token_chunk is None:
            return function(*sequences)
        return map_slices(function, self.token_chunk, *sequences)


class InfiniteTalkTransformer3DModel(WanTransformer3DModel):
    """Wan2.1 I2V DiT with InfiniteTalk's single-speaker audio conditioning.

    Takes ``WanTransformer3DModel``'s arguments plus the audio adapter's; all of them are in ``config``, so
    ``save_config``/``from_config`` round-trip. Wan2.2's per-token timesteps, context parallelism and training
    (gradient checkpointing) are not supported: this is the inference model of InfiniteTalk.
    """

    _no_split_modules: ClassVar[list[str]] = ["InfiniteTalkTransformerBlock"]
    _repeated_blocks: ClassVar[list[str]] = ["InfiniteTalkTransformerBlock"]
    _keep_in_fp32_modules: ClassVar[list[str]] = [
        *WanTransformer3DModel._keep_in_fp32_modules,
        "norm_x",
        "norm",
    ]
    # Per-frame audio attention needs whole latent frames; diffusers' sequence split does not keep them.
    _cp_plan = None
    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(
        self,
        patch_size: tuple[int, ...] = (1, 2, 2),
        num_attention_heads: int = 40,
        attention_head_dim: int = 128,
        in_channels: int = 36,
        out_channels: int = 16,
        text_dim: int = 4096,
        freq_dim: int = 256,
        ffn_dim: int = 13824,
        num_layers: int = 40,
        cross_attn_norm: bool = True,
        qk_norm: str | None = "rms_norm_across_heads",
        eps: float = 1e-6,
        image_dim: int | None = 1280,
        added_kv_proj_dim: int | None = 5120,
        rope_max_seq_len: int = 1024,
        pos_embed_seq_len: int | None = None,
        audio_window: int = 5,
        audio_layers: int = 12,
        audio_dim: int = 768,
        audio_intermediate_dim: int = 512,
        audio_tokens: int = 32,
        audio_token_dim: int = 768,
    ) -> None:
        if image_dim is None:
            raise ValueError("InfiniteTalk is image-to-video: image_dim must be set")
        # The parent builds its blocks from num_layers; build none there and ours here, so no block is built
        # twice (a real waste at 14B), then put the true count back into the config.
        super().__init__(
            patch_size=patch_size,
            num_attention_heads=num_attention_heads,
            attention_head_dim=attention_head_dim,
            in_channels=in_channels,
            out_channels=out_channels,
            text_dim=text_dim,
            freq_dim=freq_dim,
            ffn_dim=ffn_dim,
            num_layers=0,
            cross_attn_norm=cross_attn_norm,
            qk_norm=qk_norm,
            eps=eps,
            image_dim=image_dim,
            added_kv_proj_dim=added_kv_proj_dim,
            rope_max_seq_len=rope_max_seq_len,
            pos_embed_seq_len=pos_embed_seq_len,
        )
        self.register_to_config(num_layers=num_layers)
        inner_dim = num_attention_heads * attention_head_dim
        self.blocks.extend(
            InfiniteTalkTransformerBlock(
                inner_dim,
                ffn_dim,
                num_attention_heads,
                qk_norm,
                cross_attn_norm,
                eps,
                added_kv_proj_dim,
                audio_token_dim,
            )
            for _ in range(num_layers)
        )
        self.audio_proj = AudioProjModel(
            window=audio_window,
            layers=audio_layers,
            channels=audio_dim,
            intermediate_dim=audio_intermediate_dim,
            tokens=audio_tokens,
            token_dim=audio_token_dim,
        )

    #: What runs the self-attention of every block (``pipeline.models.attention_kernels``); set through
    #: ``set_attention_kernel``.
    attention_kernel: AttentionKernel = AttentionKernel.SDPA

    def set_token_chunk(self, tokens: int | None) -> None:
        """Run every block's token-wise work ``tokens`` tokens at a time (None: all at once).

        Lowers the activation peak of a pass (``python -m bench.activation_memory``) for a few more, smaller
        kernel launches; the output is the same up to float rounding.
        """
        check_token_chunk(tokens)
        for block in self.blocks:
            block.token_chunk = tokens
        self._install_attention_processors()

    def set_attention_kernel(self, kernel: AttentionKernel | str) -> None:
        """Run every block's self-attention with ``kernel`` (a concrete one: resolve ``auto`` first with
        ``attention_kernels.resolve_kernel``)."""
        kernel = AttentionKernel(kernel)
        if kernel is AttentionKernel.AUTO:
            raise ValueError("resolve 'auto' to a kernel for this device first (resolve_kernel)")
        self.attention_kernel = kernel
        self._install_attention_processors()

    def _install_attention_processors(self) -> None:
        """diffusers' own processor when neither option is set (the reference), ours otherwise; either way
        the diffusers attention backend each processor had is kept."""
        for block in self.blocks:
            for attention in (block.attn1, block.attn2):
                backend = attention.processor._attention_backend
                kernel = self.attention_kernel if attention is block.attn1 else AttentionKernel.SDPA
                if block.token_chunk is None and kernel is AttentionKernel.SDPA:
                    attention.set_processor(WanAttnProcessor())
                else:
                    attention.set_processor(WanAttentionProcessor(block.token_chunk, kernel))
                attention.processor._attention_backend = backend

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_hidden_states_image: torch.Tensor,
        audio_embeds: torch.Tensor,
        speaker_masks: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predicted velocity ``[B, out_channels, F, H, W]``.

        ``hidden_states`` ``[B, in_channels, F, H, W]`` (noisy latent ‖ ``y``), ``timestep`` ``[B]`` (0-1000),
        ``encoder_hidden_states`` ``[B, 512, text_dim]`` (zero-padded umT5), ``encoder_hidden_states_image``
        ``[B, 257, image_dim]`` (CLIP), ``audio_embeds`` ``[B, 4·(F−1)+1, window, audio_layers, audio_dim]``
        for one speaker, or ``[B, 2, ...]`` for two, which then need ``speaker_masks`` ``[3, H', W']``
        (speaker 1, speaker 2, background; any size, resized to the token grid by nearest neighbour).
        """
        batch, _, frames, height, width = hidden_states.shape
        p_t, p_h, p_w = self.config.patch_size
        grid = (frames // p_t, height // p_h, width // p_w)
        two_speakers = audio_embeds.ndim == 6
        if two_speakers and speaker_masks is None:
            raise ValueError("two speakers' audio_embeds need speaker_masks")
        if not two_speakers and speaker_masks is not None:
            raise ValueError("speaker_masks go with two speakers' audio_embeds [batch, 2, ...]")
        per_speaker = audio_embeds.flatten(0, 1) if two_speakers else audio_embeds
        self._check_inputs(hidden_states, timestep, encoder_hidden_states, per_speaker, two_speakers)
        masks = None
        if speaker_masks is not None:
            masks = token_masks(speaker_masks.to(hidden_states.device), grid[1:])

        rotary_emb = self.rope(hidden_states)
        hidden_states = self.patch_embedding(hidden_states).flatten(2).transpose(1, 2).contiguous()

        temb, timestep_proj, encoder_hidden_states, encoder_hidden_states_image = self.condition_embedder(
            timestep, encoder_hidden_states, encoder_hidden_states_image
        )
        timestep_proj = timestep_proj.unflatten(1, (6, -1))
        encoder_hidden_states = torch.cat([encoder_hidden_states_image, encoder_hidden_states], dim=1)
        audio_tokens = self.audio_proj(per_speaker.to(self.audio_proj.proj1.weight.dtype))
        if two_speakers:  # [B·2, F, 32, C] → [B, F, 2·32, C], speaker 1's tokens first
            audio_tokens = audio_tokens.unflatten(0, (batch, SPEAKERS)).transpose(1, 2).flatten(2, 3)

        for block in self.blocks:
            hidden_states = block(
                hidden_states, encoder_hidden_states, timestep_proj, rotary_emb, audio_tokens, masks
            )

        shift, scale = (self.scale_shift_table + temb.unsqueeze(1)).chunk(2, dim=1)
        hidden_states = (self.norm_out(hidden_states.float()) * (1 + scale) + shift).type_as(hidden_states)
        hidden_states = self.proj_out(hidden_states)

        hidden_states = hidden_states.reshape(batch, *grid, p_t, p_h, p_w, -1)
        hidden_states = hidden_states.permute(0, 7, 1, 4, 2, 5, 3, 6)
        return hidden_states.flatten(6, 7).flatten(4, 5).flatten(2, 3)

    def _check_inputs(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        audio_embeds: torch.Tensor,
        two_speakers: bool,
    ) -> None:
        if hidden_states.ndim != 5 or hidden_states.shape[1] != self.config.in_channels:
            raise ValueError(
                f"hidden_states must be [batch, {self.config.in_channels}, frames, height, width], "
                f"got {tuple(hidden_states.shape)}"
            )
        batch, _, frames, height, width = hidden_states.shape
        p_t, p_h, p_w = self.config.patch_size
        if frames % p_t or height % p_h or width % p_w:
            raise ValueError(
                f"hidden_states {tuple(hidden_states.shape)} is not a multiple of the patch size"
            )
        # diffusers' Wan attention splits image from text tokens by assuming exactly 512 text tokens.
        if encoder_hidden_states.ndim != 3 or encoder_hidden_states.shape[:2] != (batch, TEXT_TOKENS):
            raise ValueError(
                f"encoder_hidden_states must be [{batch}, {TEXT_TOKENS}, text_dim] (zero-padded), "
                f"got {tuple(encoder_hidden_states.shape)}"
            )
        if timestep.ndim != 1 or timestep.shape[0] != batch:
            raise ValueError(f"timestep must be [{batch}], got {tuple(timestep.shape)}")
        expected = (
            batch * SPEAKERS if two_speakers else batch,
            self.audio_proj.temporal_stride * (frames - 1) + 1,
            self.config.audio_window,
            self.config.audio_layers,
            self.config.audio_dim,
        )
        if tuple(audio_embeds.shape) != expected:
            raise ValueError(
                f"audio_embeds must be {list(expected)} for {frames} latent frames, "
                f"got {list(audio_embeds.shape)}"
            )
