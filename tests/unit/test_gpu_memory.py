"""A replica sharing its GPU is held to its share of the memory (pipeline.gpu_memory, the Sampler's use)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import ray
import torch

from pipeline.gpu_memory import GIB, OUTSIDE_ALLOCATOR_BYTES, allocator_cap_bytes, cap_to_share
from serve.deployments.sampler import gpu_share

H100_BYTES = 80 * GIB


def test_half_a_gpu_allows_half_its_memory_less_what_the_allocator_cannot_count():
    assert allocator_cap_bytes(0.5, H100_BYTES) == 40 * GIB - OUTSIDE_ALLOCATOR_BYTES
    assert allocator_cap_bytes(0.25, H100_BYTES) == 20 * GIB - OUTSIDE_ALLOCATOR_BYTES


@pytest.mark.parametrize("share", [1.0, 2.0])
def test_a_whole_gpu_is_not_capped(share):
    assert allocator_cap_bytes(share, H100_BYTES) is None


def test_a_share_too_small_to_hold_anything_is_refused_with_the_sizes():
    with pytest.raises(ValueError, match=r"0\.01 share of a 80\.0 GiB GPU leaves nothing"):
        allocator_cap_bytes(0.01, H100_BYTES)
    with pytest.raises(ValueError, match="must be positive"):
        allocator_cap_bytes(0.0, H100_BYTES)


@pytest.fixture
def fake_cuda(monkeypatch):
    """One 80 GiB card, current device 0: only CUDA's start-up and the native call are faked, so torch's
    own ``set_per_process_memory_fraction`` checks its arguments; the caps it sets are recorded."""
    caps: list[tuple[float, int]] = []
    card = SimpleNamespace(total_memory=H100_BYTES)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda.memory, "_lazy_init", lambda: None)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: card)
    monkeypatch.setattr(torch._C, "_cuda_setMemoryFraction", lambda *cap: caps.append(cap), raising=False)
    return caps


@pytest.mark.parametrize("device", [torch.device("cuda", 0), torch.device("cuda")])
def test_a_shared_gpu_caps_the_allocator_at_the_share(fake_cuda, device):
    # "cuda" without an index is what the Sampler gets when model.device is unset (the GPU configs).
    assert cap_to_share(device, 0.5) == 40 * GIB - OUTSIDE_ALLOCATOR_BYTES
    assert fake_cuda == [((40 * GIB - OUTSIDE_ALLOCATOR_BYTES) / H100_BYTES, 0)]


@pytest.mark.parametrize(("device", "share"), [("cpu", 0.5), ("cuda", None), ("cuda", 1.0)])
def test_nothing_is_capped_on_a_cpu_without_a_share_or_on_a_whole_gpu(fake_cuda, device, share):
    assert cap_to_share(torch.device(device), share) is None
    assert fake_cuda == []


def test_outside_ray_there_is_no_share_and_asking_starts_no_ray():
    assert not ray.is_initialized()
    assert gpu_share() is None
    assert not ray.is_initialized()


@pytest.mark.parametrize(("assigned", "share"), [({"GPU": 0.5, "CPU": 4.0}, 0.5), ({"CPU": 1.0}, None)])
def test_a_replica_reads_the_share_ray_scheduled_it_with(monkeypatch, assigned, share):
    # What Ray 2.5x's runtime context answers in an actor of num_gpus=0.5, num_cpus=4, and in one with no GPU.
    context = SimpleNamespace(get_assigned_resources=lambda: assigned)
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "get_runtime_context", lambda: context)
    assert gpu_share() == share
