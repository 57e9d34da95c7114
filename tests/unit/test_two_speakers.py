"""Two speakers in the DiT against the reference's math (MeiGen-AI/InfiniteTalk: ``calculate_x_ref_attn_map``,
``SingleStreamMutiAttention``, ``RotaryPositionalEmbedding1D``), written out here independently, in fp32.

The whole-forward test runs the model twice with the same weights: once as built, once with every block's
audio attention replaced by the reference's, which takes the queries and keys of that block's
self-attention as diffusers' own Wan processor computes them (captured from its attention call).
"""

from __future__ import annotations

import math

import pytest
import torch
from diffusers.models.transformers import transformer_wan

from pipeline.models.speakers import rotate_1d, speaker_map, token_masks, token_positions
from pipeline.presets import TINY
from pipeline.weights.dit import build_transformer

CONFIG = TINY.transformer
FRAMES, HEIGHT, WIDTH = 3, 6, 8  # latent sizes: 3 × 3 × 4 tokens


def _randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    return model


def _inputs(batch: int = 1, seed: int = 1) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    audio_frames = 4 * (FRAMES - 1) + 1
    return {
        "hidden_states": torch.randn(batch, 36, FRAMES, HEIGHT, WIDTH, generator=generator),
        "timestep": torch.rand(batch, generator=generator) * 1000,
        "encoder_hidden_states": torch.randn(batch, 512, CONFIG["text_dim"], generator=generator),
        "encoder_hidden_states_image": torch.randn(batch, 257, CONFIG["image_dim"], generator=generator),
        "audio_embeds": torch.randn(
            batch, 2, audio_frames, 5, CONFIG["audio_layers"], CONFIG["audio_dim"], generator=generator
        ),
    }


def _halves(height: int = HEIGHT, width: int = WIDTH) -> torch.Tensor:
    """Speaker 1 on the left, speaker 2 on the right (inset), background elsewhere, at latent size."""
    masks = torch.zeros(3, height, width)
    masks[0, 1:-1, : width // 2] = 1
    masks[1, 1:-1, width // 2 :] = 1
    masks[2] = (masks[:2].sum(0) == 0).float()
    return masks


# -- the reference, written out ------------------------------------------------------------------------------


def reference_map(query: torch.Tensor, key: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """[1, L, H, D] queries, [1, L, H, D] keys (all tokens), [3, R] masks → [3, L]."""
    reference_tokens = masks.shape[1]
    q = query.transpose(1, 2) / math.sqrt(query.shape[-1])  # [1, H, L, D]
    k = key[:, :reference_tokens].transpose(1, 2)
    probabilities = (q @ k.transpose(-1, -2)).softmax(dim=-1)  # [1, H, L, R]
    rows = [(probabilities * mask).sum(-1) / mask.sum() for mask in masks]  # each [1, H, L]
    return torch.cat([row.mean(dim=1) for row in rows])  # [3, L]


def reference_positions(attention_map: torch.Tensor) -> torch.Tensor:
    def scaled(row: torch.Tensor, low: float) -> torch.Tensor:
        return (row - row.min()) / (row.max() - row.min() + 1e-8) * 4 + low

    candidates = torch.stack([scaled(attention_map[0], 0), scaled(attention_map[1], 20)])
    candidates = torch.cat([candidates, torch.full_like(candidates[:1], 12.0)])
    owner = attention_map.argmax(dim=0)
    return candidates.gather(0, owner[None])[0]


def reference_rope(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """[S, H, D] at [S] positions: freqs repeated per pair, rotate_half on (even, odd) pairs."""
    dim = x.shape[-1]
    frequencies = 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim))
    angles = (positions[:, None] * frequencies).repeat_interleave(2, dim=-1)[:, None, :]  # [S, 1, D]
    pairs = x.unflatten(-1, (-1, 2))
    rotated_half = torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)
    return x * angles.cos() + rotated_half * angles.sin()


def reference_audio_attention(
    attention: torch.nn.Module, x: torch.Tensor, audio: torch.Tensor, positions: torch.Tensor
) -> torch.Tensor:
    """[1, F·S, d] video tokens, [1, F, 64, C] audio tokens, [F·S] positions → [1, F·S, d]."""
    frames, heads = audio.shape[1], attention.heads
    per_frame = x.shape[1] // frames
    out = []
    for frame in range(frames):
        tokens = slice(frame * per_frame, (frame + 1) * per_frame)
        q = attention.q_linear(x[0, tokens]).view(per_frame, heads, -1)
        kv = attention.kv_linear(audio[0, frame]).view(audio.shape[2], 2, heads, -1)
        k, v = kv[:, 0], kv[:, 1]
        q = reference_rope(q, positions[tokens])
        k = reference_rope(k, torch.tensor([2.0] * 32 + [22.0] * 32))
        weights = (q.transpose(0, 1) @ k.permute(1, 2, 0) / math.sqrt(q.shape[-1])).softmax(-1)  # [H, S, 64]
        out.append((weights @ v.transpose(0, 1)).transpose(0, 1).reshape(per_frame, -1))
    return attention.proj(torch.cat(out))[None]


# -- the pieces ----------------------------------------------------------------------------------------------


def _close(ours: torch.Tensor, reference: torch.Tensor) -> None:
    assert torch.linalg.vector_norm(ours - reference) <= 1e-5 * torch.linalg.vector_norm(reference)


def test_map_and_positions_match_the_reference():
    generator = torch.Generator().manual_seed(3)
    length, reference_tokens, heads, dim = 3 * 12, 12, 4, 16
    query = torch.randn(1, length, heads, dim, generator=generator)
    key = torch.randn(1, length, heads, dim, generator=generator)
    masks = token_masks(_halves(), (3, 4))
    ours = speaker_map(query, key[:, :reference_tokens], masks)
    expected = reference_map(query, key, masks)
    _close(ours[0], expected)
    _close(token_positions(ours)[0], reference_positions(expected))


def test_positions_fall_in_each_classes_range():
    attention_map = torch.tensor([[[0.9, 0.5, 0.1, 0.2], [0.05, 0.4, 0.8, 0.1], [0.05, 0.1, 0.1, 0.7]]])
    positions = token_positions(attention_map)[0]
    assert positions[0] == pytest.approx(4.0)  # speaker 1's strongest token: the top of its range
    assert 0.0 <= positions[1] <= 4.0
    assert positions[2] == pytest.approx(24.0)
    assert positions[3] == 12.0


def test_rotation_matches_the_reference_rope():
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(7, 3, 16, generator=generator)
    positions = torch.rand(7, generator=generator) * 24
    _close(rotate_1d(x[None], positions[None])[0], reference_rope(x, positions))


def test_token_masks_are_the_nearest_binarised_grid():
    masks = token_masks(_halves(), (3, 4))
    assert masks.shape == (3, 12)
    grid = masks.view(3, 3, 4)
    assert grid[0, 1].tolist() == [1, 1, 0, 0] and grid[1, 1].tolist() == [0, 0, 1, 1]
    assert torch.equal(grid[:2].sum(0) + grid[2], torch.ones(3, 4))
    with pytest.raises(ValueError, match=r"\[3, height, width\]"):
        token_masks(torch.ones(2, 4, 4), (2, 2))


# -- the whole forward ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model():
    return _randomise(build_transformer(CONFIG, seed=0))


def _reference_forward(model, inputs: dict[str, torch.Tensor], masks: torch.Tensor) -> torch.Tensor:
    """The model with each block's audio attention replaced by the reference's, fed by the queries and keys
    that diffusers' Wan processor hands to its self-attention call in that block."""
    captured: list[tuple[torch.Tensor, torch.Tensor]] = []
    original_dispatch = transformer_wan.dispatch_attention_fn

    def capturing_dispatch(query, key, value, *args, **kwargs):
        if key.shape[1] == query.shape[1]:  # self-attention (cross-attention keys are text or image)
            captured.append((query, key))
        return original_dispatch(query, key, value, *args, **kwargs)

    token_grid_masks = token_masks(masks, (HEIGHT // 2, WIDTH // 2))

    def reference_block_audio(attention):
        def forward(hidden_states, audio_tokens, positions=None):
            query, key = captured[-1]
            places = reference_positions(reference_map(query, key, token_grid_masks))
            return reference_audio_attention(attention, hidden_states, audio_tokens, places)

        return forward

    saved = []
    try:
        transformer_wan.dispatch_attention_fn = capturing_dispatch
        for block in model.blocks:
            saved.append(block.audio_cross_attn.forward)
            block.audio_cross_attn.forward = reference_block_audio(block.audio_cross_attn)
        with torch.no_grad():
            return model(**inputs, speaker_masks=masks)
    finally:
        transformer_wan.dispatch_attention_fn = original_dispatch
        for block, forward in zip(model.blocks, saved, strict=False):
            block.audio_cross_attn.forward = forward


def test_two_speaker_forward_matches_the_reference(model):
    inputs, masks = _inputs(), _halves()
    with torch.no_grad():
        ours = model(**inputs, speaker_masks=masks)
    _close(ours, _reference_forward(model, inputs, masks))


def test_two_speaker_forward_is_the_same_token_chunked_and_per_batch_item(model):
    inputs, masks = _inputs(batch=2, seed=5), _halves()
    with torch.no_grad():
        whole = model(**inputs, speaker_masks=masks)
        first = model(**{name: value[:1] for name, value in inputs.items()}, speaker_masks=masks)
        try:
            model.set_token_chunk(7)
            chunked = model(**inputs, speaker_masks=masks)
        finally:
            model.set_token_chunk(None)
    torch.testing.assert_close(first, whole[:1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=1e-5)


def test_the_speakers_audio_matters_and_masks_are_required(model):
    inputs, masks = _inputs(), _halves()
    swapped = {**inputs, "audio_embeds": inputs["audio_embeds"].flip(1)}
    with torch.no_grad():
        out = model(**inputs, speaker_masks=masks)
        assert not torch.allclose(out, model(**swapped, speaker_masks=masks))
        with pytest.raises(ValueError, match="need speaker_masks"):
            model(**inputs)
        single = {**inputs, "audio_embeds": inputs["audio_embeds"][:, 0]}
        with pytest.raises(ValueError, match="two speakers"):
            model(**single, speaker_masks=masks)
