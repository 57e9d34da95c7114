"""Hostile media for the input battery, generated on the fly (nothing checked in): lying, truncated, empty,
hours-long and decompression-bomb files, each a few kilobytes to a megabyte."""

from __future__ import annotations

import base64
import io
import struct
import wave
import zlib
from functools import cache
from pathlib import Path

import av
import numpy as np

ASSETS = Path(__file__).resolve().parents[1] / "pipeline" / "assets"


def data_uri(data: bytes, media_type: str) -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode('ascii')}"


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


@cache
def png_bomb(side: int = 20000) -> bytes:
    """A valid 1-bit PNG of side × side black pixels (400 megapixels, 1.2 GB as RGB) in about 50 KB."""
    row = b"\x00" * (1 + side // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    block = 1000
    parts = [compressor.compress(row * block) for _ in range(side // block)]
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit greyscale
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", b"".join(parts))
        + _png_chunk(b"IEND", b"")
    )


@cache
def truncated_png() -> bytes:
    """The example portrait cut after its first kilobyte: a PNG signature with a broken body."""
    return (ASSETS / "portrait.png").read_bytes()[:1024]


def portrait_png() -> bytes:
    return (ASSETS / "portrait.png").read_bytes()


def text_bytes() -> bytes:
    return b"This is a text file, whatever its name or content type says.\n" * 20


def svg_bytes() -> bytes:
    return b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"></svg>'


def _wav(rate: int, samples: bytes, *, width: int = 1, declared_bytes: int | None = None) -> bytes:
    """A PCM WAV whose data chunk may claim more bytes than it holds (``declared_bytes``)."""
    if declared_bytes is None:
        buffer = io.BytesIO()
        with wave.open(buffer, "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(width)
            out.setframerate(rate)
            out.writeframes(samples)
        return buffer.getvalue()
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * width, width, 8 * width)
    riff_size = (36 + declared_bytes) & 0xFFFFFFFF
    return (
        b"RIFF"
        + struct.pack("<I", riff_size)
        + b"WAVE"
        + b"fmt "
        + struct.pack("<I", len(fmt))
        + fmt
        + b"data"
        + struct.pack("<I", declared_bytes)
        + samples
    )


def empty_wav() -> bytes:
    """A well-formed WAV with zero samples."""
    return _wav(16000, b"", width=2)


def blip_wav(seconds: float = 0.03) -> bytes:
    """A well-formed WAV of silence shorter than one video frame (0.04 s at 25 fps)."""
    return _wav(16000, b"\x00\x00" * int(16000 * seconds), width=2)


def wav_claiming_huge_size() -> bytes:
    """A WAV header whose data chunk claims 4 GB (37 hours at 16 kHz) and that holds no sample at all."""
    return _wav(16000, b"", width=2, declared_bytes=0xFFFFFF00)


def hours_long_wav(hours: float = 2.0) -> bytes:
    """Real hours of (silent) audio in a few kilobytes: 8-bit PCM at one sample per second."""
    return _wav(1, b"\x80" * int(hours * 3600))


@cache
def hours_long_flac(hours: float = 1.0, rate: int = 8000) -> bytes:
    """An hour of digital silence in FLAC (constant subframes compress to a few bytes each)."""
    buffer = io.BytesIO()
    frame_samples = 4608
    silence = np.zeros((1, frame_samples), dtype=np.int16)
    total = int(hours * 3600 * rate)
    with av.open(buffer, "w", format="flac") as container:
        stream = container.add_stream("flac", rate=rate, layout="mono")
        for pts in range(0, total, frame_samples):
            frame = av.AudioFrame.from_ndarray(silence, format="s16", layout="mono")
            frame.sample_rate = rate
            frame.pts = pts
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue()


@cache
def counting_video(seconds: float = 3.0, fps: int = 10, width: int = 96, height: int = 64) -> bytes:
    """An H.264 MP4 whose frame ``i`` is one flat grey of level ``8·i mod 256``, so a test can tell which
    source frame it was given (x264 keeps a flat frame within a level or two)."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for index in range(round(seconds * fps)):
            pixels = np.full((height, width, 3), counting_level(index), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue()


def counting_level(index: int) -> int:
    """The grey level of ``counting_video``'s frame ``index``."""
    return 8 * index % 256
