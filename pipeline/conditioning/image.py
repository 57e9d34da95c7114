"""The portrait: decoding an upload safely, then fitting it to the working size (MODEL.md §4).

``load_image`` needs only Pillow, so an ingress can validate uploads without loading torch; torch is imported
by ``portrait_tensor`` on first use.
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline.errors import ImageError, SizeError

if TYPE_CHECKING:
    import torch

DEFAULT_MAX_PIXELS = 8192 * 8192
_EXIF_ORIENTATION = 0x0112
# EXIF orientations 5-8 are transposes or quarter turns: the upright image has its width and height swapped.
_QUARTER_TURNS = frozenset({5, 6, 7, 8})
# Pillow raises these for truncated or malformed data depending on the codec.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error)


def load_image(
    source: bytes | str | os.PathLike,
    *,
    name: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Image.Image:
    """Decode a portrait into an RGB image, upright as its EXIF orientation says.

    The size is checked from the header before any pixel is decoded, so a small file that claims a huge canvas
    (a decompression bomb) costs nothing. Pillow's own process-wide bomb limit is left as it is (changing a
    global per call would race between threads); its error is mapped like every other failure. Every failure
    is an ``ImageError`` naming ``name`` (default: the path, or "image" for bytes).
    """
    stream, label = _stream(source, name)
    with _decoding(label), Image.open(stream) as image:
        _check_size(image.size, label, max_pixels)
        image.load()
        rgb = ImageOps.exif_transpose(image).convert("RGB")
    _check_size(rgb.size, label, max_pixels)
    return rgb


def check_image(
    source: bytes, *, name: str = "image", max_pixels: int = DEFAULT_MAX_PIXELS, scale_to: int = 2048
) -> tuple[int, int]:
    """Whether ``source`` decodes as ``load_image`` will decode it, as cheaply as that can be told: the
    header's size first, a JPEG at the smallest scale still ``scale_to`` pixels wide (every byte of it is
    decoded all the same), no colour conversion. Its size as ``load_image`` gives it (upright: an EXIF
    orientation that turns it a quarter swaps the sides); ``ImageError`` like ``load_image``.
    """
    stream, label = _stream(source, name)
    with _decoding(label), Image.open(stream) as image:
        width, height = image.size
        _check_size((width, height), label, max_pixels)
        turned = image.getexif().get(_EXIF_ORIENTATION) in _QUARTER_TURNS
        image.draft(image.mode, (scale_to, scale_to))
        image.load()
    return (height, width) if turned else (width, height)


def _stream(source: bytes | str | os.PathLike, name: str | None) -> tuple[io.BytesIO | Path, str]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return io.BytesIO(bytes(source)), name or "image"
    path = Path(source)
    label = name or str(path)
    if not path.is_file():
        raise ImageError(f"{label}: no such file")
    return path, label


@contextlib.contextmanager
def _decoding(label: str) -> Iterator[None]:
    """Every way Pillow fails to decode, as an ``ImageError`` naming ``label``."""
    try:
        yield
    except Image.DecompressionBombError:
        raise ImageError(f"{label}: image is too large (decompression bomb protection)") from None
    except UnidentifiedImageError:
        raise ImageError(f"{label}: not an image in a format this server reads") from None
    except _DECODE_ERRORS as error:
        raise ImageError(f"{label}: unreadable, truncated or corrupt image ({error})") from None


def _check_size(size: tuple[int, int], label: str, max_pixels: int) -> None:
    width, height = size
    if width < 1 or height < 1:
        raise ImageError(f"{label}: image has zero size ({width}×{height})")
    if width * height > max_pixels:
        raise ImageError(f"{label}: image is too large ({width}×{height}; at most {max_pixels} pixels)")


def portrait_tensor(image: Image.Image, width: int, height: int) -> torch.Tensor:
    """``[1, 3, height, width]`` pixels in [−1, 1]: scaled to cover the target, then centre-cropped.

    One bicubic resample straight from the source region that survives the crop (Pillow's ``box``), rather
    than resize-then-crop, so no rounding of an intermediate size shifts the crop by a pixel.
    """
    import torch

    if width < 1 or height < 1:
        raise SizeError(f"portrait size must be positive, got {width}×{height}")
    source_width, source_height = image.size
    if source_width < 1 or source_height < 1:
        raise ImageError(f"portrait has zero size ({source_width}×{source_height})")
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    scale = max(width / source_width, height / source_height)
    crop_width, crop_height = width / scale, height / scale
    left, top = (source_width - crop_width) / 2, (source_height - crop_height) / 2
    fitted = rgb.resize(
        (width, height), Image.Resampling.BICUBIC, box=(left, top, left + crop_width, top + crop_height)
    )
    pixels = torch.from_numpy(np.array(fitted, dtype=np.uint8)).permute(2, 0, 1).float()
    return (pixels / 127.5 - 1.0).unsqueeze(0)
