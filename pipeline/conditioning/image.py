"""The portrait: decoding an upload safely, then fitting it to the working size (MODEL.md §4).

``load_image`` needs only Pillow, so an ingress can validate uploads without loading torch; torch is imported
by ``portrait_tensor`` on first use.
"""

from __future__ import annotations

import io
import os
import struct
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline.errors import ImageError, SizeError

if TYPE_CHECKING:
    import torch

DEFAULT_MAX_PIXELS = 8192 * 8192
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
    if isinstance(source, (bytes, bytearray, memoryview)):
        label = name or "image"
        stream: io.BytesIO | Path = io.BytesIO(bytes(source))
    else:
        stream = Path(source)
        label = name or str(stream)
        if not stream.is_file():
            raise ImageError(f"{label}: no such file")
    try:
        with Image.open(stream) as image:
            _check_size(image.size, label, max_pixels)
            image.load()
            upright = ImageOps.exif_transpose(image)
            rgb = upright.convert("RGB")
    except Image.DecompressionBombError:
        raise ImageError(f"{label}: image is too large (decompression bomb protection)") from None
    except UnidentifiedImageError:
        raise ImageError(f"{label}: not an image in a format this server reads") from None
    except _DECODE_ERRORS as error:
        raise ImageError(f"{label}: unreadable, truncated or corrupt image ({error})") from None
    _check_size(rgb.size, label, max_pixels)
    return rgb


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
