"""A whole generation with every model on PyTorch's meta device, standing in for a GPU this suite never has:
any tensor the pipeline leaves on the host and mixes with the models' fails here as it would on CUDA."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from pipeline.audio import decode_audio
from pipeline.components import Components, apply_options, load_components
from pipeline.conditioning import load_image
from pipeline.pipeline import GenerationRequest, InfiniteTalkPipeline


@pytest.fixture
def request_with_guidance(assets) -> GenerationRequest:
    return GenerationRequest(
        image=load_image(assets / "portrait.png"),
        speech=decode_audio(assets / "speech.wav"),
        prompt="a woman is talking",
        width=128,
        height=128,
        frames=125,  # two chunks: the motion frames cross from one to the next
        steps=2,
        cfg=1.5,
    )


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
    output = InfiniteTalkPipeline(parts).generate(request_with_guidance)
    assert output.video.shape == (3, 125, 128, 128) and output.video.device.type == "cpu"
    assert [latents.shape[2] for latents in output.chunk_latents] == [21, 21]
