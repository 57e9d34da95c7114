"""Token-chunked DiT blocks: the same output as whole-sequence blocks, a lower activation peak, every
attention still through the selected backend, and bad settings refused by name."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from diffusers.models.attention_dispatch import (
    AttentionBackendName,
    _AttentionBackendRegistry,
    attention_backend,
)
from diffusers.models.transformers.transformer_wan import WanAttnProcessor
from pydantic import ValidationError

from bench.activation_memory import dit_pass_gib, fake_transformer
from bench.tensor_memory import fake_tensors
from pipeline.components import load_components
from pipeline.errors import InputError
from pipeline.models.transformer import InfiniteTalkTransformer3DModel
from pipeline.models.wan_attention import WanAttentionProcessor, map_slices
from pipeline.pipeline import InfiniteTalkPipeline
from pipeline.presets import INFINITETALK_14B, TINY
from pipeline.warmup import CHUNK_LATENT_FRAMES, pass_inputs
from pipeline.weights.dit import build_transformer
from serve.config import ModelConfig

CONFIG = TINY.transformer
FRAMES, HEIGHT, WIDTH = CHUNK_LATENT_FRAMES, 8, 10  # latent sizes: 4·5 = 20 tokens per frame, 420 in all


def _inputs(batch: int = 2) -> dict[str, torch.Tensor]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        return pass_inputs(CONFIG, WIDTH * 8, HEIGHT * 8, "cpu", torch.float32, batch)


@pytest.fixture
def model() -> Iterator[InfiniteTalkTransformer3DModel]:
    generator = torch.Generator().manual_seed(0)
    model = build_transformer(CONFIG, seed=0)
    with torch.no_grad():  # non-trivial norms and modulation tables too, so a misplaced slice shows
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    # set_attention_backend also changes diffusers' process-wide choice; this puts it back afterwards.
    with attention_backend("native"):
        yield model


def _run(model: InfiniteTalkTransformer3DModel, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.inference_mode():
        return model(**inputs)


@pytest.mark.parametrize("tokens", [1, 7, 20, 419, 420, 1000])
def test_chunked_blocks_give_the_whole_sequence_output(model, tokens):
    inputs = _inputs()
    whole = _run(model, inputs)
    model.set_token_chunk(tokens)
    torch.testing.assert_close(_run(model, inputs), whole, atol=2e-6, rtol=1e-5)


def test_chunked_blocks_work_on_fused_projections(model):
    inputs = _inputs()
    whole = _run(model, inputs)
    model.fuse_qkv_projections()
    model.set_token_chunk(4)
    torch.testing.assert_close(_run(model, inputs), whole, atol=2e-6, rtol=1e-5)


def test_setting_and_clearing_swaps_the_wan_processors_and_keeps_the_backend(model):
    model.set_attention_backend("_native_math")
    model.set_token_chunk(8)
    processors = [attention.processor for block in model.blocks for attention in (block.attn1, block.attn2)]
    assert all(isinstance(p, WanAttentionProcessor) and p.tokens == 8 for p in processors)
    assert all(p._attention_backend == AttentionBackendName._NATIVE_MATH for p in processors)
    assert all(block.token_chunk == 8 for block in model.blocks)
    model.set_token_chunk(None)
    processors = [attention.processor for block in model.blocks for attention in (block.attn1, block.attn2)]
    assert all(type(p) is WanAttnProcessor for p in processors)
    assert all(p._attention_backend == AttentionBackendName._NATIVE_MATH for p in processors)
    assert all(block.token_chunk is None for block in model.blocks)


def test_chunked_attention_goes_through_the_selected_backend(model, monkeypatch):
    name = AttentionBackendName._NATIVE_MATH
    original = _AttentionBackendRegistry._backends[name]
    queries: list[int] = []

    def counting(**kwargs):
        queries.append(kwargs["query"].shape[1])
        return original(**kwargs)

    monkeypatch.setitem(_AttentionBackendRegistry._backends, name, counting)
    model.set_attention_backend("_native_math")
    model.set_token_chunk(16)
    _run(model, _inputs(batch=1))
    per_frame = HEIGHT * WIDTH // 4
    tokens = FRAMES * per_frame
    slices = [16] * (tokens // 16) + [tokens % 16]
    # self-attention over all tokens; image and text attention per slice of 16 (and the rest); audio a whole
    # latent frame at a time (a slice holds at least one)
    per_block = [tokens] + slices * 2 + [per_frame] * FRAMES
    assert sorted(queries) == sorted(per_block * CONFIG["num_layers"])


@pytest.mark.parametrize("bad", [0, -4, 2.5, "64", True])
def test_bad_chunk_sizes_are_refused_by_name(model, bad):
    with pytest.raises(ValueError, match="token chunk must be a positive integer"):
        model.set_token_chunk(bad)


def test_load_components_reports_a_bad_chunk_as_an_input_error_and_records_a_good_one():
    with pytest.raises(InputError, match="token chunk"):
        load_components("tiny", device="cpu", with_audio_encoder=False, token_chunk=0)
    components = load_components(
        "tiny", device="cpu", with_audio_encoder=False, token_chunk=64, vae_tiling=True
    )
    assert all(block.token_chunk == 64 for block in components.transformer.blocks)
    assert components.vae.model.use_tiling
    assert components.identities["token_chunk"] == "64"
    assert components.identities["vae_tiling"] == "on"


def test_the_attention_mask_is_refused():
    processor = WanAttentionProcessor(4)
    with pytest.raises(ValueError, match="no attention mask"):
        processor(None, torch.zeros(1, 2, 4), attention_mask=torch.ones(1, 2))


def test_map_slices_writes_every_slice_once():
    sequence = torch.arange(2 * 11 * 3, dtype=torch.float32).view(2, 11, 3)
    calls: list[int] = []

    def double(part: torch.Tensor) -> torch.Tensor:
        calls.append(part.shape[1])
        return part * 2

    torch.testing.assert_close(map_slices(double, 4, sequence), sequence * 2, atol=0, rtol=0)
    assert calls == [4, 4, 3]


def test_chunking_lowers_the_14b_activation_peak_at_480x832():
    with fake_tensors():
        model = fake_transformer(dict(INFINITETALK_14B.transformer))
        whole = dit_pass_gib(model, "480x832", "cfg 1", None)
        chunked = dit_pass_gib(model, "480x832", "cfg 1", 4096)
        batched = dit_pass_gib(model, "480x832", "cfg ≠ 1, batched", None)
        one_at_a_time = dit_pass_gib(model, "480x832", "cfg ≠ 1, one at a time", None)
    # 32 760 tokens of 5120 channels: 0.31 GiB per bf16 copy. The whole pass peaks at about 10 such copies;
    # the chunked one at 5, in self-attention: block input, Q, K, V (RoPE applied), attention output.
    assert chunked < 0.55 * whole
    assert 1.5 < chunked < 1.8
    # Guidance one pass at a time peaks like one pass, plus the batch-2 inputs and the first velocity.
    assert one_at_a_time < 0.6 * batched
    assert one_at_a_time == pytest.approx(whole, rel=0.05)


@pytest.mark.slow
def test_generations_on_chunked_blocks_match_and_on_a_tiled_vae_run(example_request, tiny_pipeline):
    request = example_request(width=480, height=480, frames=81, steps=2)
    reference = tiny_pipeline.generate(request)
    lean = load_components("tiny", device="cpu", with_audio_encoder=True, token_chunk=16)
    chunked = InfiniteTalkPipeline(lean).generate(request)
    for ours, theirs in zip(chunked.chunk_latents, reference.chunk_latents, strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    # Tiles small enough to split the tiny working size (diffusers' default is 256 pixels).
    lean.vae.enable_tiling(
        tile_sample_min_height=64,
        tile_sample_min_width=64,
        tile_sample_stride_height=48,
        tile_sample_stride_width=48,
    )
    tiled = InfiniteTalkPipeline(lean).generate(request)
    assert tiled.video.shape == reference.video.shape and torch.isfinite(tiled.video).all()
    # The portrait's latents, every decode and re-encode went through tiles: blended seams change them.
    assert not torch.equal(tiled.chunk_latents[0], chunked.chunk_latents[0])


def test_model_config_takes_the_memory_options_and_names_a_bad_chunk():
    assert ModelConfig().token_chunk is None and ModelConfig().vae_tiling is False
    config = ModelConfig(token_chunk=4096, vae_tiling=True)
    assert config.token_chunk == 4096 and config.vae_tiling
    for bad in (0, -1, "many"):
        with pytest.raises(ValidationError, match="token_chunk"):
            ModelConfig(token_chunk=bad)
