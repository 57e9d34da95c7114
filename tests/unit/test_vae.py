"""The VAE wrapper: latent shapes, the latent normalisation, and the 20-channel image condition ``y``."""

from __future__ import annotations

import pytest
import torch

from pipeline.conditioning import WanVAE, first_frame_mask, latent_frame_count
from pipeline.presets import TINY
from pipeline.weights.vae import build_vae

# Wan2.1's hard-coded latent statistics (wan/modules/vae.py), which the DiT was trained against.
WAN_MEAN = [
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
]  # fmt: skip
WAN_STD = [
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
]  # fmt: skip


@pytest.fixture(scope="module")
def vae() -> WanVAE:
    return build_vae(TINY.vae, seed=0)


def _video(frames: int, height: int = 32, width: int = 48, seed: int = 0) -> torch.Tensor:
    return torch.rand(1, 3, frames, height, width, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _stats() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(WAN_MEAN).view(1, 16, 1, 1, 1), torch.tensor(WAN_STD).view(1, 16, 1, 1, 1)


@pytest.mark.parametrize(("frames", "latent_frames"), [(1, 1), (9, 3), (81, 21)])
def test_latent_shapes(vae, frames, latent_frames):
    latents = vae.encode(_video(frames, 16, 24))
    assert latents.shape == (1, 16, latent_frames, 2, 3)
    assert latents.dtype == torch.float32
    assert latent_frame_count(frames) == latent_frames


def test_decode_shape_and_range(vae):
    latents = torch.randn(1, 16, 3, 4, 6, generator=torch.Generator().manual_seed(1)) * 3
    video = vae.decode(latents)
    assert video.shape == (1, 3, 9, 32, 48)
    assert video.dtype == torch.float32
    assert video.min() >= -1.0 and video.max() <= 1.0


def test_config_carries_wan_latent_statistics(vae):
    assert vae.model.config.latents_mean == pytest.approx(WAN_MEAN)
    assert vae.model.config.latents_std == pytest.approx(WAN_STD)


def test_encode_normalises_the_posterior_mean(vae):
    video = _video(9)
    mean, std = _stats()
    with torch.no_grad():
        posterior = vae.model.encode(video).latent_dist
    torch.testing.assert_close(vae.encode(video), (posterior.mean - mean) / std)
    torch.testing.assert_close(vae.encode(video), vae.encode(video))  # the mean, never a sample


def test_decode_denormalises_first(vae):
    latents = torch.randn(1, 16, 3, 4, 6, generator=torch.Generator().manual_seed(2))
    mean, std = _stats()
    with torch.no_grad():
        expected = vae.model.decode(latents * std + mean).sample.clamp(-1, 1)
    torch.testing.assert_close(vae.decode(latents), expected)


def test_normalisation_round_trip(vae):
    raw = torch.randn(2, 16, 3, 4, 6, generator=torch.Generator().manual_seed(3)) * 2
    mean, std = _stats()
    torch.testing.assert_close(vae.normalize(raw), (raw - mean) / std)
    torch.testing.assert_close(vae.denormalize(vae.normalize(raw)), raw)
    torch.testing.assert_close(vae.normalize(vae.denormalize(raw)), raw)
    assert vae.normalize(raw.to(torch.bfloat16)).dtype == torch.float32


def _reference_mask(num_frames: int, lat_h: int, lat_w: int) -> torch.Tensor:
    """The mask exactly as InfiniteTalk's wan/multitalk.py builds it."""
    msk = torch.ones(1, num_frames, lat_h, lat_w)
    msk[:, 1:] = 0
    msk = torch.concat([torch.repeat_interleave(msk[:, 0:1], repeats=4, dim=1), msk[:, 1:]], dim=1)
    msk = msk.view(1, msk.shape[1] // 4, 4, lat_h, lat_w)
    return msk.transpose(1, 2)


@pytest.mark.parametrize("num_frames", [1, 9, 81])
def test_first_frame_mask_matches_the_reference(num_frames):
    mask = first_frame_mask(num_frames, 3, 5)
    assert torch.equal(mask, _reference_mask(num_frames, 3, 5))
    assert mask.shape == (1, 4, latent_frame_count(num_frames), 3, 5)
    assert torch.equal(mask[:, :, 0], torch.ones(1, 4, 3, 5))
    assert torch.count_nonzero(mask[:, :, 1:]) == 0


def test_image_condition(vae):
    portrait = torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(4)) * 2 - 1
    y = vae.image_condition(portrait, num_frames=81)
    assert y.shape == (1, 20, 21, 4, 6)
    assert y.dtype == torch.float32
    assert torch.equal(y[:, :4, 0], torch.ones(1, 4, 4, 6))
    assert torch.count_nonzero(y[:, :4, 1:]) == 0
    frames = torch.zeros(1, 3, 81, 32, 48)
    frames[:, :, 0] = portrait
    torch.testing.assert_close(y[:, 4:], vae.encode(frames))


def test_image_condition_depends_on_the_portrait(vae):
    first = vae.image_condition(torch.full((1, 3, 16, 16), -0.5), num_frames=9)
    second = vae.image_condition(torch.full((1, 3, 16, 16), 0.5), num_frames=9)
    assert first.shape == (1, 20, 3, 2, 2)
    assert not torch.allclose(first[:, 4:], second[:, 4:])


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((1, 3, 8, 32, 32), "1 \\+ 4k"),
        ((1, 4, 9, 32, 32), "\\[B, 3, F, H, W\\]"),
        ((3, 9, 32, 32), "\\[B, 3, F, H, W\\]"),
        ((1, 3, 9, 30, 32), "multiples of 8"),
    ],
)
def test_encode_rejects_bad_videos(vae, shape, message):
    with pytest.raises(ValueError, match=message):
        vae.encode(torch.zeros(shape))


def test_decode_and_condition_reject_bad_inputs(vae):
    with pytest.raises(ValueError, match="latents must be"):
        vae.decode(torch.zeros(1, 4, 3, 4, 4))
    with pytest.raises(ValueError, match="portrait must be"):
        vae.image_condition(torch.zeros(3, 32, 32))
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        vae.image_condition(torch.zeros(1, 3, 32, 32), num_frames=80)
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        latent_frame_count(0)


def test_tiling_passthrough(vae):
    vae.enable_tiling(tile_sample_min_height=64, tile_sample_min_width=64)
    try:
        assert vae.model.use_tiling
        assert vae.model.tile_sample_min_height == 64
    finally:
        vae.disable_tiling()
    assert not vae.model.use_tiling


def test_build_is_seeded_and_frozen():
    first, again, other = (
        build_vae(TINY.vae, seed=5),
        build_vae(TINY.vae, seed=5),
        build_vae(TINY.vae, seed=6),
    )
    assert not first.training
    assert not any(p.requires_grad for p in first.parameters())
    video = _video(1, 16, 16)
    torch.testing.assert_close(first.encode(video), again.encode(video))
    assert not torch.allclose(first.encode(video), other.encode(video))
