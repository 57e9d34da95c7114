"""Peak memory of a computation without running it: every op runs on fake tensors (shapes, dtypes, no data),
and a dispatch mode counts the bytes of the storages the dispatched ops return, while they are alive.

The count is of tensors, rounded up to the CUDA caching allocator's 512-byte blocks. It leaves out what no
returned tensor holds: the CUDA context, cuBLAS workspaces, the allocator's fragmentation, and whatever an op
that reaches the dispatcher whole (scaled-dot-product attention, RMS and layer norm, linear) keeps inside its
kernel. On a GPU those kernels are fused (flash/cuDNN attention keeps O(L) beside its output), but an unfused
fallback is undercounted: the math attention backend's L×L scores are not in the count. Hence
``bench.gpu_sampler`` measures the real peak next to the count on a GPU.

``torch.distributed._tools.mem_tracker.MemTracker`` does the same per module, but refuses a module called
twice in one region, and the Wan VAE calls its decoder once per latent frame; this counts storages only.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

CUDA_BLOCK_BYTES = 512


def allocated_bytes(storage: torch.UntypedStorage) -> int:
    return math.ceil(storage.nbytes() / CUDA_BLOCK_BYTES) * CUDA_BLOCK_BYTES


class StoragePeak(TorchDispatchMode):
    """Live bytes of the storages created by ops run under it, and their peak since entry.

    Storages that existed before entry (weights, inputs) are not counted, so ``peak_bytes`` is what the
    computation adds on top of them.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live_bytes = 0
        self.peak_bytes = 0
        self._seen: weakref.WeakSet[torch.UntypedStorage] = weakref.WeakSet()

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        # An in-place op, a view or an ``out=`` returns a storage it was given: nothing new to count.
        given = {id(leaf.untyped_storage()) for leaf in _tensors((args, kwargs))}
        for leaf in _tensors(result):
            storage = leaf.untyped_storage()
            if id(storage) not in given:
                self._count(storage)
        return result

    def _count(self, storage: torch.UntypedStorage) -> None:
        if storage in self._seen:
            return
        size = allocated_bytes(storage)
        self._seen.add(storage)
        weakref.finalize(storage, self._release, size)
        self.live_bytes += size
        self.peak_bytes = max(self.peak_bytes, self.live_bytes)

    def _release(self, size: int) -> None:
        self.live_bytes -= size


def _tensors(tree: Any) -> list[torch.Tensor]:
    return [leaf for leaf in tree_leaves(tree) if isinstance(leaf, torch.Tensor)]


@contextmanager
def fake_tensors() -> Iterator[FakeTensorMode]:
    """Everything built or computed inside holds no data; modules built inside have fake parameters."""
    with FakeTensorMode(allow_non_fake_inputs=False) as mode:
        yield mode


@contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Build modules with parameters in ``dtype`` (converting fake parameters afterwards is not supported)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def peak_bytes(compute: Callable[[], Any]) -> int:
    """Peak bytes the tensors created by ``compute()`` (its result included) held at once."""
    with torch.inference_mode(), StoragePeak() as tracker:
        result = compute()
        del result
    return tracker.peak_bytes
