"""Portrait decoding (every way an upload can be bad) and fitting to the working size."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.conditioning import load_image, portrait_tensor
from pipeline.conditioning.image import check_image
from pipeline.errors import ImageError, SizeError


def _encode(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width × height`` and which holds no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


def _bands(width: int, height: int, vertical: bool) -> Image.Image:
    """Three equal bands, red | green | blue (left to right, or top to bottom)."""
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    for index in range(3):
        if vertical:
            pixels[:, index * width // 3 : (index + 1) * width // 3, index] = 255
        else:
            pixels[index * height // 3 : (index + 1) * height // 3, :, index] = 255
    return Image.fromarray(pixels)


def test_example_portrait_asset(assets):
    path = assets / "portrait.png"
    assert path.stat().st_size < 400_000
    with Image.open(path) as raw:
        assert raw.format == "PNG"
    image = load_image(path)
    assert image.mode == "RGB"
    assert image.size == (384, 384)
    assert np.asarray(image).std() > 20  # a photograph, not a flat fill


def test_bytes_and_path_decode_the_same(assets, tmp_path):
    path = assets / "portrait.png"
    from_bytes = load_image(path.read_bytes(), name="upload.png")
    assert np.array_equal(np.asarray(from_bytes), np.asarray(load_image(str(path))))


@pytest.mark.parametrize("mode", ["RGBA", "L", "P", "CMYK"])
def test_any_mode_becomes_rgb(mode):
    image = Image.new("RGB", (20, 10), (200, 100, 50)).convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    decoded = load_image(_encode(image, fmt))
    assert decoded.mode == "RGB"
    assert decoded.size == (20, 10)


def test_exif_orientation_is_applied():
    # Stored 40×20 with the left half red; orientation 6 means "rotate 90° clockwise to display".
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:, :20, 0] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    data = _encode(Image.fromarray(pixels), "JPEG", exif=exif, quality=95)
    upright = np.asarray(load_image(data))
    assert upright.shape == (40, 20, 3)
    # After a clockwise turn the stored left half is on top.
    assert upright[:18, :, 0].mean() > 200
    assert upright[22:, :, 0].mean() < 50
    assert check_image(data) == (20, 40)  # the probe tells the same upright size


@pytest.mark.parametrize(("width", "height"), [(160, 96), (96, 160), (384, 384), (720, 720), (48, 32)])
def test_portrait_tensor_size_and_range(assets, width, height):
    pixels = portrait_tensor(load_image(assets / "portrait.png"), width, height)
    assert pixels.shape == (1, 3, height, width)
    assert pixels.dtype == torch.float32
    assert pixels.min() >= -1.0
    assert pixels.max() <= 1.0
    assert pixels.min() < -0.9 and pixels.max() > 0.9  # the full range is used, not squashed


def test_portrait_tensor_maps_black_and_white_to_the_ends():
    black = portrait_tensor(Image.new("RGB", (30, 20), (0, 0, 0)), 16, 16)
    white = portrait_tensor(Image.new("RGB", (30, 20), (255, 255, 255)), 16, 16)
    assert torch.equal(black, torch.full_like(black, -1.0))
    assert torch.equal(white, torch.full_like(white, 1.0))


@pytest.mark.parametrize("vertical", [True, False])
def test_centre_crop_keeps_the_middle_band(vertical):
    # A 3:1 strip fitted into a square must keep only its middle (green) third.
    source = _bands(300, 100, vertical) if vertical else _bands(100, 300, vertical)
    pixels = portrait_tensor(source, 64, 64)[0]
    # The resampling filter reaches a few source pixels past the crop, so skip a 3-pixel border.
    inner = pixels[:, 3:-3, 3:-3]
    assert torch.allclose(inner[1], torch.ones_like(inner[1]), atol=0.02)
    assert torch.allclose(inner[0], -torch.ones_like(inner[0]), atol=0.02)
    assert torch.allclose(inner[2], -torch.ones_like(inner[2]), atol=0.02)


def test_portrait_tensor_is_deterministic(assets):
    image = load_image(assets / "portrait.png")
    assert torch.equal(portrait_tensor(image, 160, 96), portrait_tensor(image, 160, 96))


@pytest.mark.parametrize(("width", "height"), [(0, 16), (16, 0), (-16, 16)])
def test_portrait_tensor_rejects_bad_sizes(width, height):
    with pytest.raises(SizeError, match="positive"):
        portrait_tensor(Image.new("RGB", (8, 8)), width, height)


def test_portrait_tensor_rejects_an_empty_image():
    with pytest.raises(ImageError, match="zero size"):
        portrait_tensor(Image.new("RGB", (0, 8)), 16, 16)


def test_missing_file_is_named(tmp_path):
    missing = tmp_path / "nope.png"
    with pytest.raises(ImageError, match=r"nope\.png: no such file"):
        load_image(missing)
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path)


def test_not_an_image_is_named(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is text, not a picture")
    with pytest.raises(ImageError, match=r"notes\.png: not an image"):
        load_image(path)
    with pytest.raises(ImageError, match=r"upload\.jpg: not an image"):
        load_image(b"", name="upload.jpg")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_image_is_named(fmt):
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    data = _encode(Image.fromarray(noise), fmt)
    with pytest.raises(ImageError, match=r"cut\.img: unreadable, truncated or corrupt"):
        load_image(data[: len(data) // 2], name="cut.img")


def test_zero_size_image_is_rejected():
    with pytest.raises(ImageError, match=r"empty\.png"):
        load_image(_png_header_only(0, 10), name="empty.png")


def test_too_many_pixels_is_rejected_before_decoding():
    # The header claims 5000×5000 but holds no pixels: it must be refused from the header alone.
    with pytest.raises(ImageError, match=r"big.png: image is too large \(5000×5000"):
        load_image(_png_header_only(5000, 5000), name="big.png", max_pixels=1000 * 1000)


def test_max_pixels_is_enforced_on_real_images():
    data = _encode(Image.new("RGB", (100, 100)))
    assert load_image(data, max_pixels=100 * 100).size == (100, 100)
    with pytest.raises(ImageError, match="too large"):
        load_image(data, max_pixels=100 * 100 - 1)


def test_pillow_decompression_bomb_error_is_mapped(monkeypatch):
    # Beyond twice Pillow's own limit, Image.open raises DecompressionBombError itself.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageError, match=r"bomb\.png: image is too large"):
        load_image(_encode(Image.new("RGB", (100, 100))), name="bomb.png")
