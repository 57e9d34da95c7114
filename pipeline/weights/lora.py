"""Fusing Wan2.1 LoRAs into the DiT's weights at load time (MODEL.md §5): no LoRA layers at run time.

The step-distill LoRAs the low-step regime needs (lightx2v ``..._cfg_step_distill_rank64``, FusionX) use Wan's
original module names behind a ``diffusion_model.`` prefix, with ``lora_down``/``lora_up`` (or peft's
``lora_A``/``lora_B``) pairs, an optional ``alpha``, and full deltas: ``diff`` for a weight (norms too) and
``diff_b`` for a bias. Per module: ``W += scale · (alpha / rank) · up @ down``, ``W += scale · diff``,
``b += scale · diff_b``. Keys already in our naming (``transformer.`` prefix, diffusers' own format) work too.

diffusers' Wan LoRA converter is not used: it drops the ``diff`` keys, which FusionX's norms need, and it only
prepares runtime adapters. The names go through the same official → ours key map as the checkpoint instead.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from pipeline.errors import WeightsError
from pipeline.weights import dit

logger = logging.getLogger(__name__)

_OFFICIAL_PREFIXES = ("model.diffusion_model.", "diffusion_model.")
_OURS_PREFIX = "transformer."
# Longest first: "lora_up.weight" must not be read as a "weight" suffix of something else.
_SUFFIXES = {
    ".lora_up.weight": "up",
    ".lora_B.weight": "up",
    ".lora_down.weight": "down",
    ".lora_A.weight": "down",
    ".alpha": "alpha",
    ".diff_b": "diff_b",
    ".diff": "diff",
}


@dataclass
class _ModuleLora:
    official: bool
    keys: dict[str, str] = field(default_factory=dict)  # kind → the LoRA file's key
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # kind → tensor


def fuse_lora(
    model: nn.Module, lora_state_dict: Mapping[str, torch.Tensor], scale: float, source: str
) -> None:
    """Add ``scale`` × the LoRA's deltas to ``model``'s weights in place.

    Raises ``WeightsError`` naming the key when a LoRA tensor targets no tensor of the model, has a shape that
    does not fit it, or lacks its partner (an ``up`` without a ``down``); nothing is changed then.
    """
    modules = _group(lora_state_dict, source)
    parameters = dict(model.named_parameters())
    updates: list[tuple[torch.Tensor, str, _ModuleLora]] = []
    for module, lora in modules.items():
        weight_key, bias_key = _target_keys(module, lora.official)
        for kind in lora.keys:
            target = bias_key if kind == "diff_b" else weight_key
            if target not in parameters:
                raise WeightsError(f"{source}: LoRA tensor {lora.keys[kind]} targets no tensor of the model")
        _check_pairs(lora, source)
        if "diff_b" in lora.tensors:
            _check_shape(lora, "diff_b", parameters[bias_key].shape, source)
            updates.append((parameters[bias_key], "diff_b", lora))
        if "up" in lora.tensors or "diff" in lora.tensors:
            weight = parameters[weight_key]
            if "diff" in lora.tensors:
                _check_shape(lora, "diff", weight.shape, source)
            if "up" in lora.tensors:
                _check_low_rank(lora, weight.shape, source)
            updates.append((weight, "weight", lora))

    with torch.no_grad():
        for parameter, part, lora in updates:
            delta = _bias_delta(lora, parameter) if part == "diff_b" else _weight_delta(lora, parameter)
            # One rounding to the parameter's dtype: the sum is formed in fp32.
            parameter.copy_((parameter.float() + scale * delta).to(parameter.dtype))
    logger.info("fused LoRA %s at scale %s into %d tensors", source, scale, len(updates))


def _group(lora_state_dict: Mapping[str, torch.Tensor], source: str) -> dict[str, _ModuleLora]:
    modules: dict[str, _ModuleLora] = {}
    for key, tensor in lora_state_dict.items():
        name, official = _strip_prefix(key)
        suffix = next((s for s in _SUFFIXES if name.endswith(s)), None)
        if suffix is None:
            raise WeightsError(f"{source}: {key} is not a LoRA tensor (lora_up/lora_down/alpha/diff/diff_b)")
        module = name[: -len(suffix)]
        lora = modules.setdefault(module, _ModuleLora(official=official))
        kind = _SUFFIXES[suffix]
        if kind in lora.keys:
            raise WeightsError(f"{source}: {key} repeats {lora.keys[kind]}")
        lora.keys[kind] = key
        lora.tensors[kind] = tensor
    if not modules:
        raise WeightsError(f"{source}: holds no LoRA tensors")
    return modules


def _strip_prefix(key: str) -> tuple[str, bool]:
    if key.startswith(_OURS_PREFIX):
        return key[len(_OURS_PREFIX) :], False
    for prefix in _OFFICIAL_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix) :], True
    return key, True


def _target_keys(module: str, official: bool) -> tuple[str, str]:
    weight, bias = f"{module}.weight", f"{module}.bias"
    if not official:
        return weight, bias
    names = dit.official_key_map([weight, bias])
    return names[weight], names[bias]


def _check_pairs(lora: _ModuleLora, source: str) -> None:
    has_up, has_down = "up" in lora.tensors, "down" in lora.tensors
    if has_up != has_down:
        present = lora.keys["up" if has_up else "down"]
        raise WeightsError(f"{source}: LoRA tensor {present} has no {'down' if has_up else 'up'} partner")
    if "alpha" in lora.tensors and not has_up:
        raise WeightsError(f"{source}: LoRA tensor {lora.keys['alpha']} scales no up/down pair")
    if "alpha" in lora.tensors and lora.tensors["alpha"].numel() != 1:
        raise WeightsError(f"{source}: LoRA tensor {lora.keys['alpha']} is not a scalar")


def _check_shape(lora: _ModuleLora, kind: str, shape: torch.Size, source: str) -> None:
    if tuple(lora.tensors[kind].shape) != tuple(shape):
        raise WeightsError(
            f"{source}: LoRA tensor {lora.keys[kind]} has shape {tuple(lora.tensors[kind].shape)}, "
            f"the model's tensor {tuple(shape)}"
        )


def _check_low_rank(lora: _ModuleLora, shape: torch.Size, source: str) -> None:
    up, down = lora.tensors["up"], lora.tensors["down"]
    # Linear layers: up [out, r], down [r, in]; convolutions carry trailing kernel dims on both.
    fits = (
        up.ndim >= 2
        and down.ndim >= 2
        and up.shape[1] == down.shape[0]
        and up.shape[0] == shape[0]
        and math.prod(down.shape[1:]) * math.prod(up.shape[2:]) == math.prod(shape[1:])
    )
    if not fits:
        raise WeightsError(
            f"{source}: LoRA tensors {lora.keys['up']} {tuple(up.shape)} and {lora.keys['down']} "
            f"{tuple(down.shape)} do not fit the model's tensor {tuple(shape)}"
        )


def _weight_delta(lora: _ModuleLora, parameter: torch.Tensor) -> torch.Tensor:
    diff = lora.tensors.get("diff")
    if diff is not None:
        diff = diff.to(parameter.device, torch.float32)
    if "up" not in lora.tensors:
        return diff
    up = lora.tensors["up"].to(parameter.device, torch.float32).flatten(1)
    down = lora.tensors["down"].to(parameter.device, torch.float32).flatten(1)
    delta = (up @ down).reshape(parameter.shape)
    if "alpha" in lora.tensors:
        delta = delta * (lora.tensors["alpha"].item() / down.shape[0])
    return delta if diff is None else delta + diff


def _bias_delta(lora: _ModuleLora, parameter: torch.Tensor) -> torch.Tensor:
    return lora.tensors["diff_b"].to(parameter.device, torch.float32)
