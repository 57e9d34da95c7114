"""The fake-tensor memory counter behind bench.activation_memory: exact on small cases, and in agreement with
PyTorch's own MemTracker on the DiT."""

from __future__ import annotations

import pytest
import torch
from torch.distributed._tools.mem_tracker import MemTracker

from bench.tensor_memory import CUDA_BLOCK_BYTES, StoragePeak, default_dtype, fake_tensors, peak_bytes
from pipeline.models.transformer import InfiniteTalkTransformer3DModel
from pipeline.presets import TINY
from pipeline.warmup import pass_inputs

BLOCK_OF_4000_BYTES = 4096  # 1000 fp32 values, rounded up to the allocator's 512-byte blocks


def test_counts_each_new_storage_while_it_lives():
    x = torch.empty(1000)
    assert peak_bytes(lambda: (x + 1) * 2) == 2 * BLOCK_OF_4000_BYTES  # x + 1 lives until the product exists
    assert peak_bytes(lambda: (x + 1).mul_(2)) == BLOCK_OF_4000_BYTES  # in place: no second storage
    assert peak_bytes(lambda: (x + 1).view(10, 100).t().contiguous()) == 2 * BLOCK_OF_4000_BYTES
    assert peak_bytes(lambda: (x + 1).view(10, 100).t()) == BLOCK_OF_4000_BYTES  # views share the storage


def test_storages_from_before_are_not_counted_and_freed_ones_are_given_back():
    x = torch.empty(1000)
    assert peak_bytes(lambda: x.mul_(2)) == 0

    def three_temporaries_one_at_a_time() -> None:
        for _ in range(3):
            x + 1

    assert peak_bytes(three_temporaries_one_at_a_time) == BLOCK_OF_4000_BYTES
    with StoragePeak() as tracker:
        kept = x + 1
        assert tracker.live_bytes == BLOCK_OF_4000_BYTES
        del kept
        assert tracker.live_bytes == 0


def test_rounds_to_the_cuda_allocators_blocks_and_needs_no_data_under_fake_tensors():
    byte = torch.empty(1, dtype=torch.uint8)
    assert peak_bytes(lambda: byte + 1) == CUDA_BLOCK_BYTES
    with fake_tensors():
        huge = torch.empty(2**40, dtype=torch.uint8)  # a TiB: only its shape exists
        assert peak_bytes(lambda: huge + 1) == 2**40
        with default_dtype(torch.bfloat16):
            layer = torch.nn.Linear(4, 4)
    assert layer.weight.dtype == torch.bfloat16
    assert torch.get_default_dtype() == torch.float32


def test_agrees_with_pytorchs_memtracker_on_a_dit_pass():
    with fake_tensors():
        model = InfiniteTalkTransformer3DModel(**TINY.transformer).eval()
        inputs = pass_inputs(dict(TINY.transformer), 256, 256, "cpu", torch.float32)
        ours = peak_bytes(lambda: model(**inputs))
        tracker = MemTracker()
        tracker.track_external(model, *inputs.values())
        with tracker, torch.inference_mode():
            model(**inputs)
    (theirs,) = tracker.get_tracker_snapshot("peak").values()
    activations = theirs["Total"] - sum(t.nbytes for t in (*model.parameters(), *model.buffers()))
    activations -= sum(t.nbytes for t in inputs.values())
    # MemTracker counts exact bytes on the CPU; ours rounds each storage up to 512 bytes.
    assert ours == pytest.approx(activations, rel=0.02)
    assert ours > 4 * 2**20  # a real count, not a near-empty one
