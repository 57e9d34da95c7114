"""AudioProjModel: which window entries feed each latent frame (MODEL.md §2), checked with labelled inputs."""

from __future__ import annotations

import pytest
import torch

from pipeline.models import AudioProjModel

WINDOW, LAYERS, CHANNELS = 5, 12, 3
STRIDE = 4


def _model(**overrides) -> AudioProjModel:
    torch.manual_seed(0)
    sizes = {
        "window": WINDOW,
        "layers": LAYERS,
        "channels": CHANNELS,
        "intermediate_dim": 8,
        "tokens": 4,
        "token_dim": 6,
        **overrides,
    }
    return AudioProjModel(**sizes).eval()


def _labelled(batch: int, frames: int) -> torch.Tensor:
    """Every entry says where it sits: 10000·batch + 100·frame + 10·window position + layer, + channel/10."""
    b, f, w, layer, c = torch.meshgrid(
        *(torch.arange(n) for n in (batch, frames, WINDOW, LAYERS, CHANNELS)), indexing="ij"
    )
    return (10000 * b + 100 * f + 10 * w + layer + c / 10).double()


def _first_layer_inputs(model: AudioProjModel, audio: torch.Tensor) -> dict[str, torch.Tensor]:
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        getattr(model, name).register_forward_pre_hook(
            lambda _module, args, name=name: seen.__setitem__(name, args[0].detach().clone())
        )
        for name in ("proj1", "proj1_vf")
    ]
    try:
        with torch.no_grad():
            model(audio)
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def _expected_entries(audio: torch.Tensor, latent: int) -> torch.Tensor:
    """The reference's pick for later latent frame ``latent`` (≥ 1), written out frame by frame."""
    first, last = STRIDE * (latent - 1) + 1, STRIDE * latent
    centre = WINDOW // 2
    entries = [audio[:, first, w] for w in range(centre + 1)]
    entries += [audio[:, frame, centre] for frame in range(first + 1, last)]
    entries += [audio[:, last, w] for w in range(centre, WINDOW)]
    return torch.stack(entries, dim=1)  # [B, 8, layers, channels]


def test_output_shape_of_a_chunk():
    model = _model()
    out = model(torch.randn(2, 81, WINDOW, LAYERS, CHANNELS))
    assert out.shape == (2, 21, 4, 6)
    assert model.latent_frames(81) == 21


def test_first_latent_frame_sees_the_whole_window_of_video_frame_0():
    model = _model().double()
    audio = _labelled(2, 9)
    seen = _first_layer_inputs(model, audio)
    assert seen["proj1"].shape == (2, 1, WINDOW * LAYERS * CHANNELS)
    # Flattened window-major, then layer, then channel, like the reference's view(B, w·b·c).
    torch.testing.assert_close(seen["proj1"][:, 0], audio[:, 0].reshape(2, -1), rtol=0, atol=0)


def test_later_latent_frames_see_first_half_centres_second_half():
    model = _model().double()
    audio = _labelled(2, 13)  # 1 + 3·4 video frames → latent frames 1, 2, 3 after the first
    seen = _first_layer_inputs(model, audio)["proj1_vf"]
    assert seen.shape == (2, 3, 8 * LAYERS * CHANNELS)
    for latent in (1, 2, 3):
        expected = _expected_entries(audio, latent).reshape(2, -1)
        torch.testing.assert_close(seen[:, latent - 1], expected, rtol=0, atol=0)


def test_latent_frame_1_picks_named_entries():
    """Spelled out for latent frame 1 (video frames 1-4): (1,0) (1,1) (1,2) (2,2) (3,2) (4,2) (4,3) (4,4)."""
    model = _model().double()
    audio = _labelled(1, 5)
    seen = _first_layer_inputs(model, audio)["proj1_vf"].reshape(1, 1, 8, LAYERS, CHANNELS)
    picked = [(int(v) // 100, int(v) // 10 % 10) for v in seen[0, 0, :, 0, 0].tolist()]
    assert picked == [(1, 0), (1, 1), (1, 2), (2, 2), (3, 2), (4, 2), (4, 3), (4, 4)]


def test_each_latent_frame_depends_only_on_its_own_video_frames():
    model = _model()
    audio = torch.randn(1, 9, WINDOW, LAYERS, CHANNELS)
    base = model(audio)
    changed = audio.clone()
    changed[:, 5:9] += 1.0  # video frames 5-8 = latent frame 2
    out = model(changed)
    torch.testing.assert_close(out[:, :2], base[:, :2], rtol=0, atol=0)
    assert not torch.allclose(out[:, 2], base[:, 2])
    # Window positions a latent frame never reads (position 3 of video frame 1) change nothing.
    unread = audio.clone()
    unread[:, 1, 3] += 5.0
    torch.testing.assert_close(model(unread), base, rtol=0, atol=0)


def test_tokens_are_layer_normalised():
    model = _model()
    out = model(torch.randn(2, 9, WINDOW, LAYERS, CHANNELS) * 10)
    torch.testing.assert_close(out.mean(-1), torch.zeros(out.shape[:-1]), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.var(-1, unbiased=False), torch.ones(out.shape[:-1]), atol=1e-3, rtol=0)


def test_bf16_input_gives_bf16_tokens_close_to_fp32():
    model = _model()
    audio = torch.randn(1, 9, WINDOW, LAYERS, CHANNELS)
    reference = model(audio)
    out = model.to(torch.bfloat16)(audio.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), reference, atol=0.1, rtol=0.05)


def test_batch_items_are_independent():
    model = _model()
    audio = torch.randn(2, 9, WINDOW, LAYERS, CHANNELS)
    both = model(audio)
    torch.testing.assert_close(both[1:], model(audio[1:]), atol=1e-6, rtol=1e-6)


def test_parameter_names_match_the_official_checkpoint():
    names = set(_model().state_dict())
    assert names == {
        f"{layer}.{kind}"
        for layer in ("proj1", "proj1_vf", "proj2", "proj3", "norm")
        for kind in ("weight", "bias")
    }
    model = _model()
    assert model.proj1.in_features == WINDOW * LAYERS * CHANNELS
    assert model.proj1_vf.in_features == (WINDOW + STRIDE - 1) * LAYERS * CHANNELS


@pytest.mark.parametrize(
    "shape",
    [(1, 8, WINDOW, LAYERS, CHANNELS), (1, 81, WINDOW, LAYERS), (1, 0, WINDOW, LAYERS, CHANNELS)],
)
def test_rejects_bad_shapes(shape):
    with pytest.raises(ValueError, match="audio_embeds"):
        _model()(torch.zeros(shape))


def test_rejects_an_even_window():
    with pytest.raises(ValueError, match="window"):
        AudioProjModel(window=4)
