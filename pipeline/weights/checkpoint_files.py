"""Reading checkpoint files for the strict loaders, tensor by tensor.

Floating tensors are cast to the target dtype as they are read, so peak host memory stays near one copy of the
model in that dtype: safetensors are read one tensor at a time, and torch pickles (Wan's ``.pth``) are
memory-mapped rather than read into RAM first.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from pipeline.errors import WeightsError

INDEX_SUFFIX = ".index.json"
_READ_ERRORS = (SafetensorError, OSError, RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile)


def find_weights(folder: Path, names: Iterable[str]) -> Path:
    """The first of ``names`` present in ``folder`` (a ``*.index.json`` name means sharded weights)."""
    names = tuple(names)
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise WeightsError(f"{folder}: no weights ({' or '.join(names)})")


def read_tensors(path: Path, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """A state dict from a safetensors file, a torch pickle or a shard index (non-float dtypes are kept)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: missing")
    if path.name.endswith(INDEX_SUFFIX):
        return _read_shards(path, dtype)
    try:
        if path.suffix == ".safetensors":
            return _read_safetensors(path, dtype)
        return _read_pickle(path, dtype)
    except _READ_ERRORS as error:
        raise WeightsError(f"{path}: cannot read the checkpoint ({error})") from None


def _cast(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    return tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor


def _read_safetensors(path: Path, dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt", device="cpu") as handle:
        names = handle.keys()
        return {key: _cast(handle.get_tensor(key), dtype) for key in names}


def _read_pickle(path: Path, dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    # Only the zip format can be memory-mapped; older pickles are read whole.
    loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    if not isinstance(loaded, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items()
    ):
        raise WeightsError(f"{path}: not a state dict of tensors")
    return {key: _cast(loaded.pop(key), dtype) for key in list(loaded)}


def _read_shards(index: Path, dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    weight_map = read_json(index, "shard index").get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise WeightsError(f"{index}: no weight_map")
    tensors: dict[str, torch.Tensor] = {}
    for shard in dict.fromkeys(weight_map.values()):
        for key, tensor in read_tensors(index.parent / str(shard), dtype).items():
            if key in tensors:
                raise WeightsError(f"{index.parent / str(shard)}: tensor {key} also appears in another shard")
            tensors[key] = tensor
    return tensors


def read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise WeightsError(f"{path}: missing ({what})")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise WeightsError(f"{path}: not readable JSON ({what}: {error})") from None
    if not isinstance(raw, dict):
        raise WeightsError(f"{path}: expected a JSON object ({what})")
    return raw


def finish_loading(model: nn.Module, source: str, device: torch.device | str) -> nn.Module:
    """Refuse a model with tensors still on the meta device, then move it and freeze it for inference."""
    left_on_meta = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left_on_meta:
        raise WeightsError(f"{source}: tensors no checkpoint provides: {', '.join(left_on_meta)}")
    return model.to(device).eval().requires_grad_(False)
