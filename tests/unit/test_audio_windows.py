"""5-frame audio windows with clamped edges, and the time-reversed fill past the end of the audio."""

from __future__ import annotations

import pytest
import torch

from pipeline.audio import pad_embeddings_to, window_audio_embeddings


def _frames(n: int, layers: int = 1, channels: int = 1) -> torch.Tensor:
    """Frame i holds the value i everywhere, so gathered indices can be read off directly."""
    return torch.arange(n, dtype=torch.float32)[:, None, None].expand(n, layers, channels).clone()


def _indices(windows: torch.Tensor) -> list[list[int]]:
    return windows[:, :, 0, 0].long().tolist()


def test_window_of_five_clamps_at_both_ends():
    windows = window_audio_embeddings(_frames(6))
    assert windows.shape == (6, 5, 1, 1)
    assert _indices(windows) == [
        [0, 0, 0, 1, 2],
        [0, 0, 1, 2, 3],
        [0, 1, 2, 3, 4],
        [1, 2, 3, 4, 5],
        [2, 3, 4, 5, 5],
        [3, 4, 5, 5, 5],
    ]


def test_window_carries_whole_layer_and_channel_slices():
    embeddings = torch.arange(4 * 3 * 2, dtype=torch.float32).reshape(4, 3, 2)
    windows = window_audio_embeddings(embeddings)
    assert windows.shape == (4, 5, 3, 2)
    torch.testing.assert_close(windows[2, 2], embeddings[2])  # the centre is the frame itself
    torch.testing.assert_close(windows[2, 4], embeddings[3])  # i+2 clamped to the last frame
    torch.testing.assert_close(windows[0, 0], embeddings[0])  # i-2 clamped to the first frame
    torch.testing.assert_close(windows[1, 3], embeddings[2])


def test_single_frame_and_other_window_sizes():
    assert _indices(window_audio_embeddings(_frames(1))) == [[0, 0, 0, 0, 0]]
    assert _indices(window_audio_embeddings(_frames(3), window=3)) == [[0, 0, 1], [0, 1, 2], [1, 2, 2]]
    assert _indices(window_audio_embeddings(_frames(2), window=1)) == [[0], [1]]


@pytest.mark.parametrize("window", [0, 4, -1])
def test_window_must_be_positive_and_odd(window):
    with pytest.raises(ValueError, match="window"):
        window_audio_embeddings(_frames(5), window=window)


def test_window_rejects_bad_shapes():
    with pytest.raises(ValueError, match="frames, layers, channels"):
        window_audio_embeddings(torch.zeros(5, 4))
    with pytest.raises(ValueError, match="at least one frame"):
        window_audio_embeddings(torch.zeros(0, 2, 2))


def test_pad_fills_with_the_audio_played_backwards():
    padded = pad_embeddings_to(_frames(4), 7)
    assert padded[:, 0, 0].long().tolist() == [0, 1, 2, 3, 3, 2, 1]


def test_pad_matches_the_reference_flip_of_the_last_frames():
    embeddings = torch.randn(10, 3, 2)
    missing = 6
    reference = torch.cat([embeddings, torch.flip(embeddings[-missing:], dims=[0])])
    torch.testing.assert_close(pad_embeddings_to(embeddings, 10 + missing), reference)


def test_pad_bounces_when_more_than_the_whole_audio_is_missing():
    padded = pad_embeddings_to(_frames(3), 11)
    assert padded[:, 0, 0].long().tolist() == [0, 1, 2, 2, 1, 0, 0, 1, 2, 2, 1]
    assert pad_embeddings_to(_frames(1), 4)[:, 0, 0].tolist() == [0, 0, 0, 0]


def test_pad_is_identity_or_cut_when_long_enough():
    embeddings = torch.randn(5, 2, 2)
    assert torch.equal(pad_embeddings_to(embeddings, 5), embeddings)
    assert torch.equal(pad_embeddings_to(embeddings, 3), embeddings[:3])


def test_pad_rejects_bad_arguments():
    with pytest.raises(ValueError, match="at least one frame"):
        pad_embeddings_to(torch.zeros(0, 2, 2), 4)
    with pytest.raises(ValueError, match="n_total"):
        pad_embeddings_to(torch.zeros(3, 2, 2), 0)


def test_pad_then_window_as_the_pipeline_does():
    windows = window_audio_embeddings(pad_embeddings_to(_frames(4), 6))
    assert windows.shape == (6, 5, 1, 1)
    assert _indices(windows)[3] == [1, 2, 3, 3, 2]  # the last real frame sees the reversed fill ahead of it
    assert _indices(windows)[5] == [3, 3, 2, 2, 2]
