"""Decode-probe inputs at submit, so bad media is a 4xx now rather than a failed job later.

The pipeline's own decoders do the work (the same code the sampler runs later), and their errors become API
errors naming the field: 415 when the bytes are not media of the expected kind at all, 422 when they are
but cannot be used (corrupt, empty, too long, too many pixels). What the bytes are is judged from the bytes,
never from a file name or a claimed content type; the signature sniffing below only chooses between 415 and
422 after the decoder refused, so it can never reject a file the decoder reads.

Both probes are CPU-bound (up to seconds for long audio): call them in a worker thread from async code,
a bounded number at a time. Images are capped at ``MAX_IMAGE_PIXELS`` (the model uses at most 1280x720;
the cap leaves room for any photo worth sending) and checked with ``check_image`` at a reduced scale, so a
small PNG claiming a huge canvas costs nothing and a large one at most its own decoded size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pipeline.audio import SAMPLE_RATE, decode_audio
from pipeline.conditioning.image import check_image
from pipeline.errors import AudioError, ImageError, InputError, VideoError
from pipeline.source_video import probe_video as probe_source_video
from serve import fields
from serve.inputs.errors import InputRejected, NotMedia

MAX_IMAGE_PIXELS = 4096 * 4096

_IMAGE_SIGNATURES = (
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff",  # JPEG
    b"GIF87a",
    b"GIF89a",
    b"BM",
    b"II*\x00",  # TIFF
    b"MM\x00*",
    b"\x00\x00\x01\x00",  # ICO
    b"\xff\x0a",  # JPEG XL codestream
    b"\x00\x00\x00\x0cJXL ",
)
_AUDIO_SIGNATURES = (
    b"ID3",
    b"OggS",
    b"fLaC",
    b"\x1aE\xdf\xa3",  # Matroska / WebM
    b"#!AMR",
    b"caff",
    b"MThd",
    b".snd",
    b"wvpk",
    b"MAC ",
)


@dataclass(frozen=True)
class ImageProbe:
    width: int
    height: int


@dataclass(frozen=True)
class AudioProbe:
    duration_seconds: float


@dataclass(frozen=True)
class VideoProbe:
    width: int
    height: int


def probe_image(data: bytes, *, field: str = fields.IMAGE, max_pixels: int = MAX_IMAGE_PIXELS) -> ImageProbe:
    """Check the image decodes (header-checked against decompression bombs first); refusals name ``field``."""
    try:
        width, height = check_image(data, name=field, max_pixels=max_pixels)
    except ImageError as error:
        raise _refusal(error, field, _not_media(data, _looks_like_image)) from None
    return ImageProbe(width=width, height=height)


def probe_audio(data: bytes, *, field: str = fields.AUDIO, max_seconds: float | None = None) -> AudioProbe:
    """Decode the audio (refused beyond ``max_seconds``); its duration. Refusals name ``field``."""
    try:
        samples = decode_audio(data, name=field, max_seconds=max_seconds)
    except AudioError as error:
        raise _refusal(error, field, _not_media(data, _looks_like_audio)) from None
    return AudioProbe(duration_seconds=samples.size / SAMPLE_RATE)


def probe_video(
    data: bytes,
    *,
    field: str = fields.VIDEO,
    max_seconds: float | None = None,
    max_pixels: int | None = None,
) -> VideoProbe:
    """Check a video-to-video source: a video stream whose first frame decodes, within the caps; its size
    as shown (upright). Refusals name ``field``."""
    try:
        source = probe_source_video(data, name=field, max_seconds=max_seconds, max_pixels=max_pixels)
    except VideoError as error:
        raise _refusal(error, field, _not_media(data, _looks_like_video)) from None
    return VideoProbe(width=source.width, height=source.height)


def probe_any_media(
    data: bytes,
    *,
    max_audio_seconds: float | None = None,
    max_video_seconds: float | None = None,
    max_video_pixels: int | None = None,
) -> None:
    """An upload must be an image, audio or a video; the image probe's verdict is reported when all
    refuse. (A video with a sound track is also audio: the speech of a submit may come from one.)"""
    try:
        probe_image(data, field="body")
    except InputRejected as image_error:
        try:
            probe_audio(data, field="body", max_seconds=max_audio_seconds)
        except InputRejected:
            try:
                probe_video(data, field="body", max_seconds=max_video_seconds, max_pixels=max_video_pixels)
            except InputRejected:
                raise image_error from None


def _refusal(error: InputError, field: str, not_media: bool) -> InputRejected:
    # Pipeline messages often name the input already ("284_image: not an image ..."): keep the bare reason.
    reason = error.message.removeprefix(f"{field}: ")
    if not_media:
        return NotMedia(field, reason, code="unsupported_media_type", type=error.code)
    return InputRejected(field, reason, code=error.code, type=error.code)


def _not_media(data: bytes, looks_like: Callable[[bytes], bool]) -> bool:
    # Empty input is a 422 ("is empty"), not a wrong media type.
    return len(data) > 0 and not looks_like(data)


def _looks_like_image(data: bytes) -> bool:
    head = bytes(data[:16])
    if head.startswith(_IMAGE_SIGNATURES):
        return True
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return True
    # ISO base media (AVIF, HEIC): "ftyp" box at offset 4.
    return head[4:8] == b"ftyp" and head[8:12] in (b"avif", b"avis", b"heic", b"heix", b"mif1", b"msf1")


def _looks_like_video(data: bytes) -> bool:
    # Still images are never videos; audio-only files are refused by the decoder ("no video stream") as 422.
    return not _looks_like_image(data) and (_looks_like_audio(data) or bytes(data[:3]) == b"FLV")


def _looks_like_audio(data: bytes) -> bool:
    head = bytes(data[:16])
    if head.startswith(_AUDIO_SIGNATURES):
        return True
    if head[:4] == b"RIFF" and head[8:12] in (b"WAVE", b"AVI "):
        return True
    if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return True
    # MP4/M4A/3GP/MOV: a "ftyp" box at offset 4 (video files carry audio tracks too).
    if head[4:8] in (b"ftyp", b"moov", b"mdat", b"wide", b"free"):
        return True
    # MPEG audio or ADTS AAC frame sync: eleven set bits.
    return len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0
