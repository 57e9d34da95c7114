"""Video sizes as people write them: ``"720x720"``, or the API's ``"960x540 (16:9)"`` (no torch here, so the
server's config validation can use it)."""

from __future__ import annotations

import re

from pipeline.errors import SizeError

_SIZE = re.compile(r"^\s*(\d+)\s*[xX×]\s*(\d+)")


def parse_size(text: str) -> tuple[int, int]:
    """``"720x720"`` or the API's ``"960x540 (16:9)"`` → (width, height)."""
    match = _SIZE.match(text)
    if match is None:
        raise SizeError(f"a size must look like WIDTHxHEIGHT (e.g. 720x720), got {text!r}")
    width, height = int(match.group(1)), int(match.group(2))
    if width < 16 or height < 16 or width % 2 or height % 2:
        raise SizeError(f"size {width}x{height}: width and height must be even and at least 16")
    return width, height
