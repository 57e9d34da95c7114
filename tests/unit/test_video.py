import av
import numpy as np
import pytest
import torch

from pipeline.video import fit_audio, resize_video, to_uint8_frames, write_mp4


def test_fit_audio_trims_and_pads_to_video_length():
    long = np.ones(16000 * 7, dtype=np.float32)
    short = np.ones(16000, dtype=np.float32)
    assert len(fit_audio(long, 16000, 125)) == 80000
    padded = fit_audio(short, 16000, 125)
    assert len(padded) == 80000
    assert padded[16000:].max() == 0 and padded[:16000].min() == 1


def test_resize_to_exact_odd_multiple_size():
    video = torch.rand(3, 4, 544, 960) * 2 - 1
    out = resize_video(video, 960, 540)
    assert out.shape == (3, 4, 540, 960)


def test_to_uint8_frames_range_and_layout():
    video = torch.tensor([-1.0, 0.0, 1.0]).view(3, 1, 1, 1).expand(3, 2, 2, 2)
    frames = to_uint8_frames(video)
    assert frames.shape == (2, 2, 2, 3) and frames.dtype == np.uint8
    assert frames[0, 0, 0].tolist() == [0, 128, 255]


def test_mp4_is_h264_yuv420p_aac_faststart(tmp_path):
    frames = np.zeros((30, 64, 96, 3), dtype=np.uint8)
    frames[:, :, :48] = 200
    audio = fit_audio((0.2 * np.sin(np.arange(40000) / 5)).astype(np.float32), 16000, 30)
    path = write_mp4(tmp_path / "out.mp4", frames, audio, 16000)
    data = path.read_bytes()
    assert data.index(b"moov") < data.index(b"mdat"), "moov atom must come first (faststart)"
    with av.open(str(path)) as container:
        video, sound = container.streams.video[0], container.streams.audio[0]
        assert video.codec_context.name == "h264" and video.codec_context.pix_fmt == "yuv420p"
        assert (video.width, video.height) == (96, 64) and video.average_rate == 25
        assert sound.codec_context.name == "aac"
        assert sum(1 for _ in container.decode(video=0)) == 30
    assert not list(tmp_path.glob(".*partial"))


def test_odd_dimensions_refused(tmp_path):
    with pytest.raises(ValueError, match="even"):
        write_mp4(tmp_path / "x.mp4", np.zeros((2, 63, 64, 3), np.uint8), np.zeros(100, np.float32), 16000)
