"""decode_audio (every common container, every refusal) and normalize_loudness."""

from __future__ import annotations

import io
import os
import wave
from fractions import Fraction

import av
import numpy as np
import pyloudnorm
import pytest
from PIL import Image

from pipeline.audio import SAMPLE_RATE, decode_audio, normalize_loudness
from pipeline.audio import decode as decode_module
from pipeline.errors import AudioError

TONE_HZ = 440.0


def _tone(rate: int, seconds: float, channels: int = 1, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(round(rate * seconds)) / rate
    return np.tile(amplitude * np.sin(2 * np.pi * TONE_HZ * t), (channels, 1)).astype(np.float32)


def _encode(fmt: str, codec: str, rate: int, seconds: float, channels: int = 1) -> bytes:
    """A sine encoded by PyAV itself, so every format under test is produced from known content."""
    layout = "mono" if channels == 1 else "stereo"
    data = _tone(rate, seconds, channels)
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=fmt) as container:
        stream = container.add_stream(codec, rate=rate, layout=layout)
        frame_size = stream.codec_context.frame_size or 1024
        for start in range(0, data.shape[1], frame_size):
            chunk = np.ascontiguousarray(data[:, start : start + frame_size])
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
            frame.sample_rate, frame.pts, frame.time_base = rate, start, Fraction(1, rate)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return buffer.getvalue()


def _wav(samples: np.ndarray, rate: int = SAMPLE_RATE) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return buffer.getvalue()


def _dominant_hz(samples: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.argmax(spectrum) * SAMPLE_RATE / len(samples))


FORMATS = [
    # container, codec, source rate, channels, suffix, length tolerance in s (AAC keeps its priming)
    ("mp3", "libmp3lame", 44_100, 2, ".mp3", 0.01),
    ("ipod", "aac", 44_100, 1, ".m4a", 0.03),
    ("ogg", "libopus", 48_000, 2, ".ogg", 0.01),
    ("flac", "flac", 22_050, 1, ".flac", 0.001),
    ("wav", "pcm_s16le", 8_000, 2, ".wav", 0.001),
]


@pytest.mark.parametrize(("fmt", "codec", "rate", "channels", "suffix", "tolerance"), FORMATS)
def test_decodes_every_common_format_to_mono_16k(tmp_path, fmt, codec, rate, channels, suffix, tolerance):
    data = _encode(fmt, codec, rate, 1.0, channels)
    path = tmp_path / f"tone{suffix}"
    path.write_bytes(data)

    samples = decode_audio(path)

    assert samples.dtype == np.float32 and samples.ndim == 1
    assert abs(len(samples) / SAMPLE_RATE - 1.0) <= tolerance
    # A wrong rate would shift the tone: 440 Hz must stay 440 Hz at 16 kHz.
    assert abs(_dominant_hz(samples) - TONE_HZ) < 2.0
    assert 0.3 < float(np.abs(samples[2000:-2000]).max()) < 1.0
    np.testing.assert_array_equal(decode_audio(data, name=path.name), samples)


def test_stereo_is_downmixed_not_one_channel_dropped():
    rate = 16_000
    left = _tone(rate, 1.0)[0]
    stereo = np.stack([left, np.zeros_like(left)])  # the speech is only on the left
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="wav") as container:
        stream = container.add_stream("pcm_s16le", rate=rate, layout="stereo")
        frame = av.AudioFrame.from_ndarray(stereo, format="fltp", layout="stereo")
        frame.sample_rate, frame.pts, frame.time_base = rate, 0, Fraction(1, rate)
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))

    mono = decode_audio(buffer.getvalue())

    assert len(mono) == rate
    # Mixed in at reduced level: neither silent nor the raw left channel.
    assert 0.1 < float(np.abs(mono).max()) < 0.5


def test_resamples_to_16k():
    samples = decode_audio(_wav(_tone(44_100, 2.0)[0], rate=44_100))
    assert len(samples) == 2 * SAMPLE_RATE
    assert abs(_dominant_hz(samples) - TONE_HZ) < 1.0


def test_text_file_is_not_audio(tmp_path):
    path = tmp_path / "notes.mp3"
    path.write_text("this is not audio at all\n" * 20)
    with pytest.raises(AudioError, match=r"notes\.mp3: not a decodable audio file"):
        decode_audio(path)


def test_png_named_mp3_is_refused(tmp_path):
    path = tmp_path / "picture.mp3"
    Image.new("RGB", (8, 8), "red").save(path, format="PNG")
    with pytest.raises(AudioError, match=r"picture\.mp3: (no audio stream|not a decodable)"):
        decode_audio(path)


def test_video_without_audio_has_no_audio_stream():
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "yuv420p"
        for index in range(2):
            frame = av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    with pytest.raises(AudioError, match=r"clip\.mp4: no audio stream"):
        decode_audio(buffer.getvalue(), name="clip.mp4")


def test_wav_with_zero_samples_is_empty():
    with pytest.raises(AudioError, match=r"silence\.wav: contains no audio samples"):
        decode_audio(_wav(np.zeros(0)), name="silence.wav")


def test_zero_byte_inputs_are_empty(tmp_path):
    path = tmp_path / "nothing.wav"
    path.write_bytes(b"")
    with pytest.raises(AudioError, match=r"nothing\.wav: is empty"):
        decode_audio(path)
    with pytest.raises(AudioError, match=r"upload\.ogg: is empty"):
        decode_audio(b"", name="upload.ogg")


def test_bytes_without_a_name_are_called_audio_input():
    with pytest.raises(AudioError, match=r"^audio input: not a decodable"):
        decode_audio(b"plain text, no audio")


def test_missing_path_and_directory(tmp_path):
    missing = tmp_path / "gone.wav"
    with pytest.raises(AudioError, match=rf"{missing}: file does not exist"):
        decode_audio(missing)
    with pytest.raises(AudioError, match="is not a file"):
        decode_audio(tmp_path)
    with pytest.raises(AudioError, match=r"^speech\.wav: file does not exist"):
        decode_audio(str(missing), name="speech.wav")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads any file")
def test_unreadable_path(tmp_path):
    path = tmp_path / "locked.wav"
    path.write_bytes(_wav(_tone(SAMPLE_RATE, 0.5)[0]))
    path.chmod(0)
    with pytest.raises(AudioError, match=r"locked\.wav: cannot be read"):
        decode_audio(path)


def test_permission_denied_is_reported(tmp_path, monkeypatch):
    # Root reads any file, so the check is driven through os.access here; the test above is the real thing.
    path = tmp_path / "private.wav"
    path.write_bytes(_wav(_tone(SAMPLE_RATE, 0.5)[0]))
    monkeypatch.setattr(decode_module.os, "access", lambda *args, **kwargs: False)
    with pytest.raises(AudioError, match=r"private\.wav: cannot be read \(permission denied\)"):
        decode_audio(path)


def test_too_long_is_refused_from_the_header_before_decoding(monkeypatch):
    def must_not_decode(*args, **kwargs):
        raise AssertionError("decoding started although the header already says the file is too long")

    monkeypatch.setattr(decode_module, "_resampled", must_not_decode)
    with pytest.raises(AudioError, match=r"long\.wav: audio lasts 3\.0 s, longer than the 1 s limit"):
        decode_audio(_wav(_tone(SAMPLE_RATE, 3.0)[0]), name="long.wav", max_seconds=1.0)


def test_too_long_without_a_declared_duration_stops_decoding_at_the_cap(monkeypatch):
    decoded = []
    real_resampled = decode_module._resampled

    def counting(container, stream):
        for chunk in real_resampled(container, stream):
            decoded.append(chunk.size)
            yield chunk

    monkeypatch.setattr(decode_module, "_declared_seconds", lambda container, stream: None)
    monkeypatch.setattr(decode_module, "_resampled", counting)
    with pytest.raises(AudioError, match=r"stream\.wav: audio is longer than the 1 s limit"):
        decode_audio(_wav(_tone(SAMPLE_RATE, 30.0)[0]), name="stream.wav", max_seconds=1.0)
    assert SAMPLE_RATE < sum(decoded) < 1.5 * SAMPLE_RATE  # stopped right after the cap, not after 30 s


@pytest.mark.parametrize(("fmt", "codec", "rate"), [("wav", "pcm_s16le", 16_000), ("ogg", "libopus", 48_000)])
def test_exactly_at_the_cap_is_accepted(fmt, codec, rate):
    samples = decode_audio(_encode(fmt, codec, rate, 2.0), max_seconds=2.0)
    assert abs(len(samples) - 2 * SAMPLE_RATE) <= SAMPLE_RATE // 100


def test_max_seconds_must_be_positive():
    with pytest.raises(ValueError, match="max_seconds"):
        decode_audio(_wav(_tone(SAMPLE_RATE, 0.5)[0]), max_seconds=0)


def test_example_speech_assets_match(assets):
    wav = decode_audio(assets / "speech.wav")
    mp3 = decode_audio(assets / "speech.mp3")
    assert 5.0 <= len(wav) / SAMPLE_RATE <= 6.5
    assert abs(len(wav) - len(mp3)) / SAMPLE_RATE <= 0.1
    for samples in (wav, mp3):
        assert float(np.sqrt(np.mean(samples**2))) > 0.02  # speech, not silence
    assert (assets / "speech.wav").stat().st_size < 250_000
    assert (assets / "speech.mp3").stat().st_size < 250_000


# -- loudness ------------------------------------------------------------------------------------------------


def _lufs(samples: np.ndarray, rate: int = SAMPLE_RATE) -> float:
    return pyloudnorm.Meter(rate).integrated_loudness(samples.astype(np.float64))


@pytest.mark.parametrize(("amplitude", "rate"), [(0.02, SAMPLE_RATE), (0.9, SAMPLE_RATE), (0.4, 44_100)])
def test_normalizes_to_minus_23_lufs(amplitude, rate):
    tone = _tone(rate, 2.0, amplitude=amplitude)[0]
    assert abs(_lufs(tone, rate) + 23.0) > 1.0  # the test would be vacuous otherwise
    normalized = normalize_loudness(tone, rate)
    assert normalized.dtype == np.float32 and normalized.shape == tone.shape
    assert abs(_lufs(normalized, rate) + 23.0) < 0.1


def test_other_target():
    normalized = normalize_loudness(_tone(SAMPLE_RATE, 2.0, amplitude=0.1)[0], target_lufs=-16.0)
    assert abs(_lufs(normalized) + 16.0) < 0.1


def test_silence_is_unchanged():
    silence = np.zeros(2 * SAMPLE_RATE, dtype=np.float32)
    np.testing.assert_array_equal(normalize_loudness(silence), silence)


def test_clip_shorter_than_one_block_is_unchanged():
    short = _tone(SAMPLE_RATE, 0.3, amplitude=0.01)[0]
    np.testing.assert_array_equal(normalize_loudness(short), short)
    assert normalize_loudness(np.zeros(0, dtype=np.float32)).size == 0


def test_loudness_rejects_multichannel():
    with pytest.raises(ValueError, match="mono"):
        normalize_loudness(np.zeros((2, SAMPLE_RATE), dtype=np.float32))
