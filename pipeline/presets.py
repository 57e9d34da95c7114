"""Model presets: the real InfiniteTalk-14B sizes and a tiny one for tests, CI and the local demo.

A preset only holds constructor arguments. ``tiny`` keeps every stage and the data flow of the real model
(12 wav2vec2 layers, 5-frame audio windows, 32 audio tokens per latent frame, 16 latent channels, the
20-channel ``y``, patch (1, 2, 2), VAE stride (4, 8, 8)) and shrinks widths and depths so a whole job runs
on 2 CPU cores.
It also works at a reduced internal resolution (``max_working_area``); the output is still resized to the
exact requested size, the same code path 960×540 takes on the real model.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import StrEnum
from pathlib import PurePosixPath
from typing import Any

from pipeline.errors import InputError

NEGATIVE_PROMPT = (
    "bright tones, overexposed, static, blurred details, subtitles, style, works, paintings, images, static, "
    "overall gray, worst quality, low quality, JPEG compression residue, ugly, incomplete, extra fingers, "
    "poorly drawn hands, poorly drawn faces, deformed, disfigured, misshapen limbs, fused fingers, still "
    "picture, messy background, three legs, many people in the background, walking backwards"
)


class Fp8Mode(StrEnum):
    """How the DiT's block linears are held and run (``pipeline.quantization``); any preset takes any."""

    OFF = "off"
    WEIGHTS = "weights"
    DYNAMIC = "dynamic"
    DYNAMIC_TENSORWISE = "dynamic-tensorwise"

    @property
    def runs_fp8_matmuls(self) -> bool:
        return self in (Fp8Mode.DYNAMIC, Fp8Mode.DYNAMIC_TENSORWISE)


class AttentionKernel(StrEnum):
    """What runs the DiT's self-attention (``pipeline.models.attention_kernels``); any preset takes any."""

    AUTO = "auto"
    SDPA = "sdpa"
    SDPA_CUDNN = "sdpa-cudnn"
    SDPA_FLASH = "sdpa-flash"
    SAGE = "sage"
    FA4 = "fa4"


@dataclass(frozen=True)
class Variant:
    """Which InfiniteTalk checkpoint a preset runs, and what its inputs are.

    Both published checkpoints are adapters of one transformer class with the same keys (MODEL.md §7); they
    differ in training: ``single`` for one person, ``multi`` for one or two people, whose speech tracks
    and positions (``pipeline.models.speakers``) the model then takes. A mode with other inputs (another
    class, another conditioning) is a new variant and the inputs its requests carry.
    """

    name: str
    #: The adapter file, relative to the weights directory (``pipeline.weights.layout``).
    adapter: PurePosixPath
    #: The most speech tracks (people) a request may carry.
    speakers: int


SINGLE = Variant("single", PurePosixPath("InfiniteTalk/single/infinitetalk.safetensors"), speakers=1)
MULTI = Variant("multi", PurePosixPath("InfiniteTalk/multi/infinitetalk.safetensors"), speakers=2)


@dataclass(frozen=True)
class Preset:
    name: str
    transformer: dict[str, Any]
    vae: dict[str, Any]
    text_encoder: dict[str, Any]
    image_encoder: dict[str, Any]
    audio_encoder: dict[str, Any]
    text_max_tokens: int = 512
    max_working_area: int | None = None
    needs_weights: bool = True
    random_seed: int = 0
    variant: Variant = SINGLE


_REAL_WAV2VEC2_CONV = {
    "conv_dim": [512] * 7,
    "conv_kernel": [10, 3, 3, 3, 3, 2, 2],
    "conv_stride": [5, 2, 2, 2, 2, 2, 2],
    "feat_extract_norm": "group",
    "do_stable_layer_norm": False,
}

INFINITETALK_14B = Preset(
    name="infinitetalk-14b",
    transformer={
        "patch_size": (1, 2, 2),
        "num_attention_heads": 40,
        "attention_head_dim": 128,
        "in_channels": 36,
        "out_channels": 16,
        "text_dim": 4096,
        "freq_dim": 256,
        "ffn_dim": 13824,
        "num_layers": 40,
        "cross_attn_norm": True,
        "qk_norm": "rms_norm_across_heads",
        "eps": 1e-6,
        "image_dim": 1280,
        "added_kv_proj_dim": 5120,
        "rope_max_seq_len": 1024,
        "audio_window": 5,
        "audio_layers": 12,
        "audio_dim": 768,
        "audio_intermediate_dim": 512,
        "audio_tokens": 32,
        "audio_token_dim": 768,
    },
    vae={
        "base_dim": 96,
        "z_dim": 16,
        "dim_mult": [1, 2, 4, 4],
        "num_res_blocks": 2,
        "attn_scales": [],
        "temperal_downsample": [False, True, True],
    },
    text_encoder={
        "vocab_size": 256384,
        "d_model": 4096,
        "d_kv": 64,
        "d_ff": 10240,
        "num_layers": 24,
        "num_heads": 64,
        "relative_attention_num_buckets": 32,
        "relative_attention_max_distance": 128,
        "feed_forward_proj": "gated-gelu",
        "layer_norm_epsilon": 1e-6,
        "tie_word_embeddings": False,
    },
    image_encoder={
        "hidden_size": 1280,
        "intermediate_size": 5120,
        "num_hidden_layers": 32,
        "num_attention_heads": 16,
        "image_size": 224,
        "patch_size": 14,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-5,
        "projection_dim": 1024,
    },
    audio_encoder={
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
        "num_conv_pos_embeddings": 128,
        "num_conv_pos_embedding_groups": 16,
        **_REAL_WAV2VEC2_CONV,
    },
)

TINY = Preset(
    name="tiny",
    transformer={
        **INFINITETALK_14B.transformer,
        "num_attention_heads": 2,
        "attention_head_dim": 16,
        "text_dim": 32,
        "ffn_dim": 64,
        "num_layers": 2,
        "image_dim": 32,
        "added_kv_proj_dim": 32,
        "audio_dim": 32,
        "audio_intermediate_dim": 32,
        "audio_token_dim": 32,
    },
    vae={**INFINITETALK_14B.vae, "base_dim": 4},
    text_encoder={
        **INFINITETALK_14B.text_encoder,
        "vocab_size": 512,
        "d_model": 32,
        "d_kv": 8,
        "d_ff": 64,
        "num_layers": 2,
        "num_heads": 4,
    },
    image_encoder={
        **INFINITETALK_14B.image_encoder,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 4,
        "num_attention_heads": 2,
        "projection_dim": 32,
    },
    audio_encoder={
        **INFINITETALK_14B.audio_encoder,
        "hidden_size": 32,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "conv_dim": [32] * 7,
        "num_conv_pos_embeddings": 16,
        "num_conv_pos_embedding_groups": 2,
    },
    text_max_tokens=512,
    max_working_area=160 * 96,
    needs_weights=False,
    # Random weights stand in for either checkpoint; the tiny model serves every mode.
    variant=MULTI,
)

#: The 14B model with the two-person checkpoint: ``/fast/multi`` and ``--audio2`` need it (or ``tiny``).
INFINITETALK_14B_MULTI = dataclasses.replace(INFINITETALK_14B, name="infinitetalk-14b-multi", variant=MULTI)

PRESETS: dict[str, Preset] = {p.name: p for p in (INFINITETALK_14B, INFINITETALK_14B_MULTI, TINY)}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise InputError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None
