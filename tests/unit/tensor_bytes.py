"""Bytes tensors and modules hold as stored, torchao's fp8 wrapper tensors included: the oracle the fp8 and
weight-memory tests measure against."""

from __future__ import annotations

import torch
from torch import nn


def weight_bytes(module: nn.Module) -> int:
    """Bytes of ``module``'s parameters as stored (fp8 data and its scales counted as they are)."""
    return sum(stored_bytes(parameter) for parameter in module.parameters())


def stored_bytes(tensor: torch.Tensor) -> int:
    """Bytes a tensor holds; torchao's fp8 tensors are wrapper subclasses, their bytes in inner tensors."""
    flatten = getattr(tensor, "__tensor_flatten__", None)
    if flatten is None:
        return tensor.numel() * tensor.element_size()
    names, _ = flatten()
    return sum(stored_bytes(getattr(tensor, name)) for name in names)
