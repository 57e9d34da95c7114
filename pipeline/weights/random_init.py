"""Random weights for the tiny preset, tests and benchmarks, used by every builder of ``pipeline.weights``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeVar

import torch

ModuleT = TypeVar("ModuleT", bound=torch.nn.Module)


@contextmanager
def random_init(
    seed: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> Iterator[None]:
    """Modules built inside get their random weights from ``seed``; the global RNG is left untouched.

    Off the host they are built where they will run, in ``dtype`` (the 14B preset's umT5 alone has 5.7 B
    parameters: initialising them on the host in fp32 and moving them takes minutes, on a GPU it takes
    milliseconds). On the host they are built in fp32 under whatever default device is in force, so the meta
    device of ``bench.weights_memory`` and the fake tensors of ``bench.tensor_memory`` still apply; the
    builders cast them to ``dtype`` after.
    """
    device = torch.device(device)
    # manual_seed reseeds every CUDA device, so every one's state is put back, not only the target's.
    cuda_devices = list(range(torch.cuda.device_count())) if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices):
        torch.manual_seed(seed)
        if device.type == "cpu":
            yield
            return
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            with device:
                yield
        finally:
            torch.set_default_dtype(previous)


def placed(module: ModuleT, device: torch.device | str, dtype: torch.dtype) -> ModuleT:
    """``module`` in ``dtype``, and off the host on ``device`` too: a few of transformers' parameters are made
    with the legacy ``torch.Tensor(n)``, which ignores the default device (wav2vec2's ``masked_spec_embed``).
    On the host the device is left alone, so a module built on the meta device stays there."""
    if torch.device(device).type == "cpu":
        return module.to(dtype)
    return module.to(device, dtype)
