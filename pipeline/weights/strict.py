"""Strict state-dict loading shared by every component loader."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from pipeline.errors import WeightsError

_MAX_NAMED = 8


def _named(keys: list[str]) -> str:
    shown = ", ".join(sorted(keys)[:_MAX_NAMED])
    more = len(keys) - _MAX_NAMED
    return shown + (f" (and {more} more)" if more > 0 else "")


def check_state_dict(module: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise ``WeightsError`` naming every missing, unexpected or mis-shaped tensor.

    Works on a module whose parameters live on the meta device, so it can run before any memory is spent.
    """
    expected = module.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    misshaped = [
        f"{k} (checkpoint {tuple(state_dict[k].shape)}, model {tuple(expected[k].shape)})"
        for k in expected
        if k in state_dict and tuple(state_dict[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing tensors: {_named(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors: {_named(unexpected)}")
    if misshaped:
        problems.append(f"mis-shaped tensors: {_named(misshaped)}")
    if problems:
        raise WeightsError(f"{source}: " + "; ".join(problems))


def load_state_dict_strict(
    module: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    source: str,
    dtype: torch.dtype | None = None,
) -> nn.Module:
    """Check, then load ``state_dict`` into ``module`` in place.

    ``assign=True`` makes a meta-device module adopt the checkpoint's tensors instead of copying into freshly
    allocated ones, so a 14B model is never materialised twice. Non-floating tensors keep their dtype.
    """
    check_state_dict(module, state_dict, source)
    if dtype is not None:
        state_dict = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in state_dict.items()}
    module.load_state_dict(dict(state_dict), strict=True, assign=True)
    return module
