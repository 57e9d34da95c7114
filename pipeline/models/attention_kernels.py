"""The kernel that runs the DiT's self-attention: 42 525 tokens attending to each other at 720x720, about
55 % of a pass's FLOPs, so the kernel matters as much as the GEMMs.

* ``sdpa``: PyTorch's ``scaled_dot_product_attention`` with its own backend choice, through diffusers'
  dispatcher, as diffusers' Wan model runs it. The reference.
* ``sdpa-cudnn`` / ``sdpa-flash``: the same call restricted to cuDNN's fused attention or PyTorch's
  FlashAttention-2 (``torch.nn.attention.sdpa_kernel``). Exact attention; only rounding differs.
* ``sage``: SageAttention (``pip install sageattention``; PyPI has 1.x, Triton kernels): Q and K quantised
  to int8 per block, P·V in fp16. Approximate (a pass moved 1.1 %), and on Hopper slower than cuDNN, so
  ``auto`` never picks it; its Hopper-specific successors (SageAttention 2/3) are not on PyPI.
* ``fa4``: FlashAttention-4 (``pip install flash-attn-4``; CuTe DSL kernels for Hopper and Blackwell,
  compiled on their first call per shape). Exact attention. Not yet measured here, so not in ``AUTO_ORDER``:
  ``bench.gpu_sampler`` times it beside the others wherever it is installed.
* ``auto``: the first kernel of ``AUTO_ORDER`` that this device and environment can run.

Only the self-attention switches kernels. The cross-attentions (257 image, 512 text, 32 audio keys) are a
small share of the FLOPs, and SageAttention 1.x pads keys to blocks of 64 with zeros that still take
softmax weight, which is negligible over 42 525 keys but not over 257.
"""

from __future__ import annotations

import importlib.util
import logging

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from pipeline.errors import InputError
from pipeline.presets import AttentionKernel

__all__ = ["AUTO_ORDER", "AttentionKernel", "attend", "resolve_kernel", "unusable_reason"]

logger = logging.getLogger(__name__)


# Fastest first, as measured on an H200 (torch 2.11; bench/results/gpu_sampler-20261204T181007Z.json):
# at 720x720 a pass took 5.21 s with sdpa-cudnn (PyTorch's own pick there too), 6.06 s with sage (1.0.6,
# Triton) and 6.80 s with sdpa-flash. Pinning cuDNN keeps the fastest kernel should PyTorch's heuristic
# change; SDPA runs everywhere else.
AUTO_ORDER = (AttentionKernel.SDPA_CUDNN, AttentionKernel.SDPA)

_SDPA_BACKENDS = {
    AttentionKernel.SDPA_CUDNN: [SDPBackend.CUDNN_ATTENTION],
    AttentionKernel.SDPA_FLASH: [SDPBackend.FLASH_ATTENTION],
}
_SAGE_HEAD_DIMS = (64, 96, 128)
# FlashAttention-4's forward: Hopper (9.x) and Blackwell (10.x, 11.x), head dims multiples of 8 up to 256.
_FA4_ARCHS = (9, 10, 11)
# What PyTorch's fused kernels take: cuDNN's and FlashAttention-2's need Ampere or newer, half precision, and
# head dims that are multiples of 8 up to 256 (cuDNN's limit; FlashAttention-2's too).
_FUSED_MIN_CAPABILITY = (8, 0)
_FUSED_DTYPES = (torch.float16, torch.bfloat16)
_FUSED_MAX_HEAD_DIM = 256


def unusable_reason(
    kernel: AttentionKernel, device: torch.device, dtype: torch.dtype, head_dim: int
) -> str | None:
    """Why ``kernel`` cannot run the DiT's self-attention here, or None when it can."""
    if kernel in (AttentionKernel.SDPA, AttentionKernel.AUTO):
        return None
    if device.type != "cuda":
        return f"'{kernel.value}' runs on CUDA GPUs; the model is on {device}"
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < _FUSED_MIN_CAPABILITY:
        return f"'{kernel.value}' needs compute capability 8.0 or newer, this GPU has {major}.{minor}"
    if dtype not in _FUSED_DTYPES:
        return f"'{kernel.value}' runs in bf16 or fp16, the model is in {str(dtype).removeprefix('torch.')}"
    if kernel is AttentionKernel.SAGE:
        if importlib.util.find_spec("sageattention") is None:
            return "'sage' needs SageAttention: pip install sageattention"
        if head_dim not in _SAGE_HEAD_DIMS:
            return f"'sage' takes head dims {_SAGE_HEAD_DIMS}, the model has {head_dim}"
        return None
    if kernel is AttentionKernel.FA4:
        if major not in _FA4_ARCHS:
            return f"'fa4' runs on Hopper or Blackwell GPUs, this one has compute capability {major}.{minor}"
        if not _flash_attention_4_installed():
            return "'fa4' needs FlashAttention-4: pip install flash-attn-4"
    if head_dim % 8 or head_dim > _FUSED_MAX_HEAD_DIM:
        return f"'{kernel.value}' takes head dims that are multiples of 8 up to 256, the model has {head_dim}"
    if kernel is AttentionKernel.SDPA_CUDNN and not torch.backends.cudnn.is_available():
        return "'sdpa-cudnn' needs cuDNN, which this PyTorch build lacks"
    return None


def _flash_attention_4_installed() -> bool:
    # FlashAttention-4 installs flash_attn.cute into a namespace package; FlashAttention-2 (flash_attn) has
    # no cute submodule. find_spec of a submodule imports its parent, so the parent is looked up first.
    return importlib.util.find_spec("flash_attn") is not None and (
        importlib.util.find_spec("flash_attn.cute") is not None
    )


def resolve_kernel(
    requested: AttentionKernel | str, device: torch.device, dtype: torch.dtype, head_dim: int
) -> AttentionKernel:
    """``auto`` → the first usable kernel of ``AUTO_ORDER`` (logged with what it fell back from); an
    explicit kernel that cannot run here is an ``InputError`` naming why."""
    requested = AttentionKernel(requested)
    if requested is not AttentionKernel.AUTO:
        reason = unusable_reason(requested, device, dtype, head_dim)
        if reason is not None:
            raise InputError(f"attention kernel {reason}")
        logger.info("self-attention kernel: %s (asked for)", requested.value)
        return requested
    skipped = []
    for candidate in AUTO_ORDER:
        reason = unusable_reason(candidate, device, dtype, head_dim)
        if reason is None:
            fallback = f"; not usable: {'; '.join(skipped)}" if skipped else ""
            logger.info("self-attention kernel: %s (auto%s)", candidate.value, fallback)
            return candidate
        skipped.append(reason)
    return AttentionKernel.SDPA  # AUTO_ORDER ends with SDPA, which runs anywhere


def attend(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, kernel: AttentionKernel
) -> torch.Tensor:
    """Non-causal attention without a mask on ``[B, L, heads, head_dim]`` tensors (diffusers' layout), for
    every kernel but ``sdpa`` (which goes through diffusers' dispatcher); same layout out."""
    if kernel is AttentionKernel.SAGE:
        return torch.ops.infinitetalk.sage_attention(query, key, value)
    if kernel is AttentionKernel.FA4:
        return torch.ops.infinitetalk.flash_attention_4(query, key, value)
    backends = _SDPA_BACKENDS.get(kernel)
    if backends is None:
        raise ValueError(f"attend() runs the non-reference kernels, not {kernel.value!r}")
    query, key, value = (tensor.transpose(1, 2) for tensor in (query, key, value))
    with sdpa_kernel(backends):
        out = torch.nn.functional.scaled_dot_product_attention(query, key, value)
    return out.transpose(1, 2)


# A custom op, so torch.compile treats SageAttention's Triton launches (and the checks around them) as one
# opaque call with a known output shape, instead of tracing into them.
@torch.library.custom_op("infinitetalk::sage_attention", mutates_args=())
def sage_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    from sageattention import sageattn

    # SageAttention subtracts K's mean over the sequence (which adds one constant to each query's scores, so
    # the softmax is unchanged) in place when asked to; done here out of place, the caller's K is untouched.
    key = key - key.mean(dim=1, keepdim=True)
    return sageattn(query, key, value, tensor_layout="NHD", is_causal=False, smooth_k=False)


@sage_attention.register_fake
def _sage_attention_shape(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    return query.new_empty(query.shape)


# Opaque to torch.compile as SageAttention is: FlashAttention-4 compiles and launches its own CuTe kernels.
@torch.library.custom_op("infinitetalk::flash_attention_4", mutates_args=())
def flash_attention_4(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    from flash_attn.cute import flash_attn_func

    out, _ = flash_attn_func(query, key, value, causal=False)  # [B, L, heads, head_dim] in and out
    return out


@flash_attention_4.register_fake
def _flash_attention_4_shape(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    return query.new_empty(query.shape)
