"""Keeping a process that shares its GPU inside its share of the GPU's memory.

Ray schedules fractional GPUs by count alone: two ``num_gpus: 0.5`` Sampler replicas land on one card and
nothing stops either from taking the memory the other needs, so one job too large for its half would make
the *other* replica's next allocation fail. Capping PyTorch's caching allocator at the process's share
keeps such a failure in the process that caused it.
"""

from __future__ import annotations

import torch

GIB = 1024**3
# What a process holds on its GPU outside PyTorch's allocator, which the cap cannot count (the CUDA context,
# the kernel libraries' modules and handles: about 0.5-0.8 GiB with lazy module loading). Each sharer leaves
# this much of its share for it.
OUTSIDE_ALLOCATOR_BYTES = 1 * GIB


def allocator_cap_bytes(share: float, total_bytes: int) -> int | None:
    """How much PyTorch may allocate for a process given ``share`` of a GPU of ``total_bytes``; None for a
    whole GPU (nothing to cap)."""
    if share <= 0:
        raise ValueError(f"a GPU share must be positive, got {share!r}")
    if share >= 1:
        return None
    cap = int(share * total_bytes) - OUTSIDE_ALLOCATOR_BYTES
    if cap <= 0:
        raise ValueError(
            f"a {share:g} share of a {total_bytes / GIB:.1f} GiB GPU leaves nothing to allocate after the "
            f"{OUTSIDE_ALLOCATOR_BYTES / GIB:g} GiB a process holds outside PyTorch's allocator"
        )
    return cap


def cap_to_share(device: torch.device, share: float | None) -> int | None:
    """Cap PyTorch's allocations on ``device`` at this process's ``share`` of it: past the cap an allocation
    raises ``torch.OutOfMemoryError`` here, whatever the GPU still has free. The cap in bytes; None when
    there is nothing to cap (a CPU device, no share given, or a whole GPU)."""
    if device.type != "cuda" or share is None:
        return None
    # "cuda" alone (model.device unset) means the current device; the cap needs its index.
    index = device.index if device.index is not None else torch.cuda.current_device()
    total = torch.cuda.get_device_properties(index).total_memory
    cap = allocator_cap_bytes(share, total)
    if cap is not None:
        torch.cuda.set_per_process_memory_fraction(cap / total, index)
    return cap
