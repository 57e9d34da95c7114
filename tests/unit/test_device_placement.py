"""A whole generation with every model on PyTorch's meta device, standing in for a GPU this suite never has:
any tensor the pipeline leaves on the host and mixes with the models' fails here as it would on CUDA.

Meta alone lets some ops mix devices that CUDA refuses (matmul, linear without bias, conv, embedding), so
every op also runs under ``SameDevice``, which refuses them all."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from pipeline.components import Components, apply_options, load_components
from pipeline.pipeline import GenerationRequest, InfiniteTalkPipeline

# The ops that move data between devices (``.to``, ``.cpu``, assignment into a tensor elsewhere).
_DEVICE_COPIES = {torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default}


class SameDevice(TorchDispatchMode):
    """Every op but a copy takes its tensors from one device; a 0-dim host tensor counts as a scalar there,
    as CUDA allows."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in _DEVICE_COPIES:
            devices = {
                leaf.device
                for leaf in tree_leaves((args, kwargs))
                if isinstance(leaf, torch.Tensor) and not (leaf.device.type == "cpu" and leaf.dim() == 0)
            }
            if len(devices) > 1:
                raise AssertionError(f"{func} takes tensors from {sorted(map(str, devices))}")
        return func(*args, **kwargs)


def test_same_device_refuses_what_meta_alone_lets_through():
    host, meta = torch.ones(2, 2), torch.ones(2, 2, device="meta")
    assert (meta @ host).is_meta  # meta alone: silently fine, a device error on CUDA
    with SameDevice(), pytest.raises(AssertionError, match="mm"):
        meta @ host
    with SameDevice():
        assert (meta * torch.tensor(2.0)).is_meta and host.to("meta").is_meta  # scalars and copies pass


@pytest.fixture
def request_with_guidance(example_request) -> GenerationRequest:
    # 125 frames: two chunks, so the motion frames cross from one to the next
    return example_request(width=128, height=128, frames=125, steps=2, cfg=1.5)


def _on_meta(request: GenerationRequest) -> Components:
    parts = load_components("tiny", device="cpu", dtype=torch.bfloat16)
    # umT5's attention-mask helper in transformers reads mask values back, which meta tensors cannot; the
    # prompts' embeddings are cached from the host first, and the pipeline moves cached ones to its device.
    parts.text_encoder.encode([request.prompt, request.negative_prompt])
    text = parts.text_encoder.model
    for model in (parts.transformer, parts.vae, text, parts.image_encoder, parts.audio_encoder):
        model.to("meta")
    return dataclasses.replace(parts, device=torch.device("meta"))


def _host_copy_of_meta(monkeypatch: pytest.MonkeyPatch) -> None:
    """A meta tensor has no data to copy out: its host copy is uninitialised memory of the same shape."""
    copy_to_host = torch.Tensor.cpu

    def cpu(tensor: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        if tensor.is_meta:
            return torch.empty_like(tensor, device="cpu")
        return copy_to_host(tensor, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "cpu", cpu)


@pytest.mark.parametrize("lean", [False, True], ids=["as loaded", "token-chunked, tiled, one pass at a time"])
def test_a_guided_two_chunk_generation_keeps_every_tensor_on_the_models_device(
    request_with_guidance, monkeypatch, lean
):
    parts = _on_meta(request_with_guidance)
    if lean:
        apply_options(parts, token_chunk=256, vae_tiling=True, batch_guidance=False)
        parts.vae.enable_tiling(
            tile_sample_min_height=96,
            tile_sample_min_width=96,
            tile_sample_stride_height=64,
            tile_sample_stride_width=64,
        )
    _host_copy_of_meta(monkeypatch)
    with SameDevice():
        output = InfiniteTalkPipeline(parts).generate(request_with_guidance)
    assert output.video.shape == (3, 125, 128, 128) and output.video.device.type == "cpu"
    assert [latents.shape[2] for latents in output.chunk_latents] == [21, 21]
