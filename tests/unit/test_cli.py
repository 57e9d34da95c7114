"""The CLI's error paths: a message naming the file and the problem, exit code 2, no traceback."""

from __future__ import annotations

import wave

import av
import numpy as np
import pytest

from pipeline.cli import main, parse_lora
from pipeline.errors import InputError, SizeError
from pipeline.sizes import parse_size


@pytest.fixture
def empty_wav(tmp_path):
    path = tmp_path / "empty.wav"
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(16000)
    return path


def _run(capsys, *args: str) -> tuple[int, str]:
    code = main(["generate", *args])
    return code, capsys.readouterr().err


def _args(image, audio, out, *extra: str) -> list[str]:
    return ["--image", str(image), "--audio", str(audio), "--out", str(out), "--frames", "81", *extra]


def test_unreadable_image(capsys, tmp_path, assets):
    text = tmp_path / "portrait.png"
    text.write_text("not an image")
    code, err = _run(capsys, *_args(text, assets / "speech.wav", tmp_path / "o.mp4"))
    assert code == 2 and "portrait.png" in err and "Traceback" not in err


def test_missing_image(capsys, tmp_path, assets):
    code, err = _run(capsys, *_args(tmp_path / "nope.png", assets / "speech.wav", tmp_path / "o.mp4"))
    assert code == 2 and "nope.png" in err


def test_undecodable_audio(capsys, tmp_path, assets):
    fake = tmp_path / "speech.mp3"
    fake.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    code, err = _run(capsys, *_args(assets / "portrait.png", fake, tmp_path / "o.mp4"))
    assert code == 2 and "speech.mp3" in err and "Traceback" not in err


def test_empty_audio(capsys, tmp_path, assets, empty_wav):
    code, err = _run(capsys, *_args(assets / "portrait.png", empty_wav, tmp_path / "o.mp4"))
    assert code == 2 and "empty.wav" in err


def test_bad_size(capsys, tmp_path, assets):
    code, err = _run(
        capsys,
        *_args(assets / "portrait.png", assets / "speech.wav", tmp_path / "o.mp4", "--size", "721x720"),
    )
    assert code == 2 and "721x720" in err


def test_missing_weights_directory(capsys, tmp_path, assets):
    code, err = _run(
        capsys,
        *_args(
            assets / "portrait.png",
            assets / "speech.wav",
            tmp_path / "o.mp4",
            "--weights",
            str(tmp_path / "w"),
        ),
    )
    assert code == 2 and str(tmp_path / "w") in err and "does not exist" in err


def test_weights_directory_without_wan_folder(capsys, tmp_path, assets):
    (tmp_path / "w").mkdir()
    code, err = _run(
        capsys,
        *_args(
            assets / "portrait.png",
            assets / "speech.wav",
            tmp_path / "o.mp4",
            "--weights",
            str(tmp_path / "w"),
        ),
    )
    assert code == 2 and "Wan2.1-I2V-14B-480P" in err


def test_size_and_lora_parsing():
    assert parse_size("960x540 (16:9)") == (960, 540)
    assert parse_size("720X720") == (720, 720)
    with pytest.raises(SizeError):
        parse_size("big")
    assert parse_lora("/m/l.safetensors:0.8").scale == 0.8
    assert parse_lora("/m/l.safetensors").scale == 1.0
    with pytest.raises(InputError, match="scale"):
        parse_lora("/m/l.safetensors:strong")


@pytest.mark.parametrize("value", ["0", "-3", "lots"])
def test_bad_token_chunk_is_refused_before_anything_loads(capsys, tmp_path, assets, value):
    argv = _args(assets / "portrait.png", assets / "speech.wav", tmp_path / "o.mp4", "--token-chunk", value)
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", *argv])
    assert exit_info.value.code == 2
    assert "--token-chunk" in capsys.readouterr().err


def test_a_kernel_this_device_cannot_run_is_refused_by_name(capsys, tmp_path, assets):
    args = _args(assets / "portrait.png", assets / "speech.wav", tmp_path / "o.mp4", "--device", "cpu")
    code, err = _run(capsys, *args, "--attention", "sdpa-cudnn")
    assert code == 2 and "'sdpa-cudnn' runs on CUDA GPUs; the model is on cpu" in err
    assert not (tmp_path / "o.mp4").exists()


def test_fast_path_options_parse():
    from pipeline.cli import build_parser

    args = build_parser().parse_args(
        [
            "generate",
            "--image",
            "a.png",
            "--audio",
            "a.wav",
            "--out",
            "o.mp4",
            "--attention",
            "auto",
            "--compile",
        ]
    )
    assert (args.attention, args.compile, args.fp8) == ("auto", True, "off")
    defaults = build_parser().parse_args(
        ["generate", "--image", "a.png", "--audio", "a.wav", "--out", "o.mp4"]
    )
    # Exact kernels only by default; compiling pays off over a server's jobs, fp8 is lossy: both asked for.
    assert (defaults.attention, defaults.compile, defaults.fp8) == ("auto", False, "off")


def _write_wav(path, seconds: float) -> None:
    samples = (0.3 * np.sin(np.linspace(0, 440 * 2 * np.pi * seconds, int(16000 * seconds)))) * 32767
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(16000)
        handle.writeframes(samples.astype("<i2").tobytes())


def test_frames_auto_with_speech_shorter_than_a_frame_is_refused(capsys, tmp_path, assets):
    _write_wav(tmp_path / "blip.wav", 0.03)
    args = ["--image", str(assets / "portrait.png"), "--audio", str(tmp_path / "blip.wav")]
    code, err = _run(capsys, *args, "--out", str(tmp_path / "o.mp4"), "--frames", "auto")
    assert code == 2 and "blip.wav" in err and "shorter than one video frame" in err
    assert not (tmp_path / "o.mp4").exists()


@pytest.mark.parametrize("value", ["0", "-3", "auto5", "many"])
def test_bad_frame_counts_are_refused_by_the_parser(capsys, value):
    with pytest.raises(SystemExit) as exited:
        main(["generate", "--image", "a.png", "--audio", "a.wav", "--out", "o.mp4", "--frames", value])
    assert exited.value.code == 2 and "--frames" in capsys.readouterr().err


@pytest.mark.slow
def test_frames_auto_makes_the_video_as_long_as_the_speech(capsys, tmp_path, assets):
    _write_wav(tmp_path / "speech.wav", 1.3)  # 32.5 frames: the reference keeps the 32 whole ones
    out = tmp_path / "auto.mp4"
    args = ["--image", str(assets / "portrait.png"), "--audio", str(tmp_path / "speech.wav")]
    options = ["--frames", "auto", "--size", "64x64", "--steps", "1", "--audio-cfg", "2"]
    code, err = _run(capsys, *args, "--out", str(out), *options)
    assert code == 0, err
    assert "(32 frames, 64x64)" in err
    with av.open(str(out)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 32
    with av.open(str(out)) as container:
        stream = container.streams.audio[0]
        seconds = sum(f.samples for f in container.decode(audio=0)) / stream.codec_context.sample_rate
    assert abs(seconds - 32 / 25) < 0.07  # AAC pads to its 1024-sample frames


def test_boxes_without_a_second_speaker_are_refused(capsys, tmp_path, assets):
    args = _args(
        assets / "portrait.png", assets / "speech.wav", tmp_path / "o.mp4", "--left-box", "0,0,10,10"
    )
    code, err = _run(capsys, *args, "--right-box", "10,0,20,10")
    assert code == 2 and "--audio2" in err


def test_one_box_of_two_is_refused(capsys, tmp_path, assets):
    args = _args(assets / "portrait.png", assets / "speech.wav", tmp_path / "o.mp4")
    code, err = _run(capsys, *args, "--audio2", str(assets / "speech.wav"), "--left-box", "0,0,10,10")
    assert code == 2 and "both --left-box and --right-box" in err


@pytest.mark.parametrize("box", ["1,2,3", "a,b,c,d", "1,2,3,4,5"])
def test_a_malformed_box_is_refused_by_the_parser(capsys, box):
    with pytest.raises(SystemExit) as exited:
        main(["generate", "--image", "a.png", "--audio", "a.wav", "--out", "o.mp4", "--left-box", box])
    assert exited.value.code == 2 and "LEFT,TOP,RIGHT,BOTTOM" in capsys.readouterr().err


@pytest.mark.slow
def test_two_speakers_one_after_the_other_last_as_long_as_both(capsys, tmp_path, assets):
    _write_wav(tmp_path / "left.wav", 0.6)
    _write_wav(tmp_path / "right.wav", 0.8)
    out = tmp_path / "two.mp4"
    args = ["--image", str(assets / "portrait.png"), "--audio", str(tmp_path / "left.wav")]
    options = ["--audio2", str(tmp_path / "right.wav"), "--order", "left_right", "--frames", "auto"]
    code, err = _run(capsys, *args, "--out", str(out), *options, "--size", "64x64", "--steps", "1")
    assert code == 0, err
    assert "(35 frames, 64x64)" in err  # 1.4 s of speech in turn
    with av.open(str(out)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 35
