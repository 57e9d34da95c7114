"""Video-to-video dubbing: probing the source, the frame each chunk follows, the output's size and length."""

from __future__ import annotations

import av
import numpy as np
import pytest
import torch

from loadtest.hostile_media import blip_wav, counting_level, counting_video, portrait_png
from pipeline.audio import decode_audio
from pipeline.cli import main
from pipeline.conditioning import portrait_tensor
from pipeline.errors import InputError, VideoError
from pipeline.source_video import chunk_references, dubbing_size, frames_at, probe_video
from pipeline.streaming import chunk_count

RATE = 16_000


def _level(image) -> float:
    return float(np.asarray(image).astype(np.float32).mean())


def test_a_probe_tells_the_size_and_duration():
    facts = probe_video(counting_video(seconds=3.0, fps=10, width=96, height=64))
    assert (facts.width, facts.height) == (96, 64)
    assert facts.duration_seconds == pytest.approx(3.0, abs=0.11)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "is empty"),
        (b"this is not a video at all" * 10, "not a decodable video file"),
        (blip_wav(0.5), "no video stream"),
        (portrait_png(), "is a still image, not a video"),
        (counting_video(seconds=3.0)[:600], "no decodable video frame|cannot be decoded|not a decodable"),
        (counting_video(seconds=0.5, width=8, height=8), "frames are 8x8, smaller than 16 pixels"),
    ],
)
def test_unusable_sources_are_refused_by_name(data, reason):
    with pytest.raises(VideoError, match=f"source clip: ({reason})"):
        probe_video(data, name="source clip")


def test_caps_on_duration_and_pixels():
    data = counting_video(seconds=3.0, width=96, height=64)
    with pytest.raises(VideoError, match=r"lasts 3\.0 s, longer than the 2 s limit"):
        probe_video(data, max_seconds=2)
    with pytest.raises(VideoError, match="96x64, more than 5000 pixels"):
        probe_video(data, max_pixels=5000)


def test_each_time_takes_the_frame_on_screen_then():
    data = counting_video(seconds=3.0, fps=10)  # frame i is shown from i/10 s
    frames = frames_at(data, [0.0, 0.05, 0.1, 1.29, 2.99, 7.5])
    assert [_level(f) for f in frames] == pytest.approx(
        [counting_level(i) for i in (0, 0, 1, 12, 29, 29)], abs=2.5
    )


def test_chunks_follow_the_source_at_their_start_in_time():
    # Chunks start at frames 0, 72, 144 of the 25 fps output: 0, 2.88 and 5.76 s. A 10 fps source shows its
    # frames 0 and 28 then, and its last frame (29) for the third chunk, which starts after its end.
    references = chunk_references(counting_video(seconds=3.0, fps=10), 200)
    assert len(references) == chunk_count(200) == 3
    assert [_level(f) for f in references] == pytest.approx([counting_level(i) for i in (0, 28, 29)], abs=2.5)


def test_the_output_keeps_the_source_size_up_to_1280x720_of_area():
    assert dubbing_size(640, 360) == (640, 360)
    assert dubbing_size(1280, 720) == (1280, 720)
    assert dubbing_size(720, 1280) == (720, 1280)
    assert dubbing_size(1920, 1080) == (1280, 720)
    width, height = dubbing_size(3000, 1001)
    assert width * height <= 1280 * 720 and width % 2 == height % 2 == 0
    assert width / height == pytest.approx(3000 / 1001, rel=0.01)


def _dub_request(example_request, source, frames, **overrides):
    references = chunk_references(source, frames)
    width, height = dubbing_size(*references[0].size)
    return example_request(
        image=references[0], source_frames=references, frames=frames, width=width, height=height, **overrides
    )


def test_each_chunk_is_conditioned_on_its_source_frame(tiny_pipeline, tiny_components, example_request):
    source = counting_video(seconds=4.0, fps=25, width=96, height=64)
    request = _dub_request(example_request, source, 160, steps=1)  # 3 chunks: frames 0, 72, 144
    seen: list[torch.Tensor] = []
    hook = tiny_components.image_encoder.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    try:
        output = tiny_pipeline.generate(request)
    finally:
        hook.remove()
    width, height = output.working_size
    assert len(seen) == 3
    for pixels, frame in zip(seen, request.source_frames, strict=True):
        torch.testing.assert_close(pixels.float(), portrait_tensor(frame, width, height))
    assert [_level(f) for f in request.source_frames] == pytest.approx(
        [counting_level(i) for i in (0, 72, 99)], abs=2.5
    )


def test_source_frames_must_match_the_chunks(tiny_pipeline, example_request):
    source = counting_video(seconds=1.0)
    request = _dub_request(example_request, source, 81)
    with pytest.raises(InputError, match="200 frames take 3 source frames"):
        tiny_pipeline.check_inputs(
            example_request(image=request.image, source_frames=request.source_frames, frames=200)
        )


@pytest.mark.slow
def test_a_dubbed_video_keeps_the_source_size_and_lasts_as_long_as_the_speech(capsys, tmp_path, assets):
    source = tmp_path / "source.mp4"
    source.write_bytes(counting_video(seconds=2.0, fps=25, width=160, height=96))
    out = tmp_path / "dubbed.mp4"
    args = ["--video", str(source), "--audio", str(assets / "speech.wav"), "--out", str(out)]
    assert main(["generate", *args, "--steps", "1", "--max-frames", "90"]) == 0, capsys.readouterr().err
    speech_frames = int(decode_audio(assets / "speech.wav").size / RATE * 25)
    frames = min(speech_frames, 90)
    with av.open(str(out)) as container:
        video = container.streams.video[0]
        assert (video.width, video.height, video.average_rate) == (160, 96, 25)
        assert sum(1 for _ in container.decode(video=0)) == frames
        audio = container.streams.audio[0]
        assert float(audio.duration * audio.time_base) == pytest.approx(frames / 25, abs=0.05)


def test_the_cli_refuses_a_size_or_a_second_speaker_with_a_video(capsys, tmp_path, assets):
    source = tmp_path / "source.mp4"
    source.write_bytes(counting_video(seconds=1.0))
    base = ["generate", "--video", str(source), "--audio", str(assets / "speech.wav"), "--out", "o.mp4"]
    assert main([*base, "--size", "480x480"]) == 2
    assert "--size goes with --image" in capsys.readouterr().err
    assert main([*base, "--audio2", str(assets / "speech.wav")]) == 2
    assert "--video dubs one speaker" in capsys.readouterr().err
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video" * 20)
    assert (
        main(["generate", "--video", str(broken), "--audio", str(assets / "speech.wav"), "--out", "o.mp4"])
        == 2
    )
    assert "broken.mp4: not a decodable video file" in capsys.readouterr().err
