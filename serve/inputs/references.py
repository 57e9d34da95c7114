"""Input references → bytes: what ``284_image`` and ``125_audio`` may name.

A reference is one of: an ``https://`` URL (the safe fetcher; ``http://`` only in the development mode), a
``data:`` URI (base64 or percent-encoded), the id of a file this tenant uploaded (``file_`` + 32 lowercase
hex digits; another tenant's id is simply not found), or one of the seed page's example names, which
resolve to the example assets shipped in ``pipeline/assets``. Anything else is refused naming the field.

Resolving is two steps, so the event loop never does CPU or disk work: ``resolve`` (async) recognises the
reference and downloads a URL; ``PendingInput.load`` (in a worker thread, with the media probe) decodes a
``data:`` URI, reads an upload or an example. Whether the bytes are really an image or audio is decided
afterwards by ``serve.inputs.probe``.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np

import pipeline.errors
from serve import fields
from serve.inputs.errors import InputRejected, InputTooLarge
from serve.inputs.fetcher import Fetcher
from serve.jobs.records import InputSource
from serve.storage import ObjectNotFound, ObjectStore, upload_key

logger = logging.getLogger(__name__)


class InputKind(StrEnum):
    IMAGE = "image"
    AUDIO = "audio"
    VIDEO = "video"

    @property
    def field(self) -> str:
        """The request field that carries this input (the seed endpoint's, where it has one)."""
        return {InputKind.IMAGE: fields.IMAGE, InputKind.AUDIO: fields.AUDIO}.get(self, fields.VIDEO)


# Example name → file in pipeline/assets, per kind: the audio example is not an image reference.
EXAMPLE_ASSETS = {
    InputKind.IMAGE: {fields.EXAMPLE_IMAGE: "portrait.png"},
    InputKind.AUDIO: {fields.EXAMPLE_AUDIO: "speech.mp3"},
    InputKind.VIDEO: {},
}
# Next to the pipeline's modules (package data of the wheel). Located through a real module: ``pipeline`` is a
# namespace package, which importlib.resources handles unreliably.
EXAMPLE_ASSETS_DIR = Path(pipeline.errors.__file__).resolve().parent / "assets"
FILE_ID_PATTERN = re.compile(r"^file_[0-9a-f]{32}\Z")
_DATA_MEDIA_TYPE = re.compile(r"^[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+$")
_BASE64_PAYLOAD = re.compile(r"[A-Za-z0-9+/]*={0,2}")
# Percent-encoded payloads hold printable ASCII only; anything else must itself be %-escaped.
_NOT_URI_CHAR = re.compile(r"[^\x20-\x7e]")
_MAX_DATA_HEADER_CHARS = 1024


def new_file_id() -> str:
    """An unguessable upload id in the format ``FILE_ID_PATTERN`` accepts."""
    return f"file_{secrets.token_hex(16)}"


def is_file_id(value: str) -> bool:
    return bool(FILE_ID_PATTERN.match(value))


@dataclass(frozen=True)
class PendingInput:
    """A recognised reference whose bytes ``load`` produces (blocking: run it in a worker thread)."""

    field: str
    source: InputSource
    load: Callable[[], bytes]


def _invalid(field: str, message: str, code: str = "invalid_input_reference") -> InputRejected:
    return InputRejected(field, message, code=code)


def _preview(reference: str) -> str:
    return repr(reference if len(reference) <= 60 else reference[:57] + "...")


class InputResolver:
    """Resolves references for one server; the byte caps are the fetcher's policy."""

    def __init__(self, fetcher: Fetcher, storage: ObjectStore) -> None:
        self._fetcher = fetcher
        self._storage = storage

    def max_bytes(self, kind: InputKind) -> int:
        policy = self._fetcher.policy
        return {
            InputKind.IMAGE: policy.max_image_bytes,
            InputKind.AUDIO: policy.max_audio_bytes,
            InputKind.VIDEO: policy.max_video_bytes,
        }[kind]

    async def resolve(
        self, reference: str, *, kind: InputKind, tenant: str, field: str | None = None
    ) -> PendingInput:
        """``field``: the request field refusals name (default: the seed endpoint's for ``kind``)."""
        field, limit = field or kind.field, self.max_bytes(kind)
        reference = reference.strip()
        lowered = reference[:8].lower()
        if lowered.startswith(("https://", "http://")):
            data = (await self._fetcher.fetch(reference, field=field, max_bytes=limit)).data
            return PendingInput(field, InputSource.URL, lambda: data)
        if lowered.startswith("data:"):
            # No encoding spends more than 3 characters a byte: a longer URI is refused before any work.
            if len(reference) > 3 * limit + _MAX_DATA_HEADER_CHARS:
                raise InputTooLarge(field, limit)
            return PendingInput(
                field, InputSource.DATA, lambda: decode_data_uri(reference, field=field, max_bytes=limit)
            )
        if reference.startswith("file_"):
            if not is_file_id(reference):
                raise _invalid(
                    field, f"{_preview(reference)} is not a valid file id ('file_' and 32 hex digits)"
                )
            return PendingInput(
                field, InputSource.UPLOAD, lambda: self._uploaded(reference, field, tenant, limit)
            )
        asset = EXAMPLE_ASSETS[kind].get(reference)
        if asset is not None:
            return PendingInput(field, InputSource.EXAMPLE, (EXAMPLE_ASSETS_DIR / asset).read_bytes)
        if "://" in reference:
            scheme = reference.split("://", 1)[0][:20]
            raise _invalid(field, f"URLs with the scheme {scheme!r} are not fetched; use https://")
        examples = ", ".join(repr(name) for name in EXAMPLE_ASSETS[kind])
        forms = "an https:// URL, a data: URI" + (
            f", an uploaded file id (file_...) or the example {examples}"
            if examples
            else " or an uploaded file id (file_...)"
        )
        raise _invalid(field, f"{_preview(reference)} is not {forms}")

    def _uploaded(self, file_id: str, field: str, tenant: str, max_bytes: int) -> bytes:
        try:
            data = self._storage.get_bytes(upload_key(tenant, file_id))
        except ObjectNotFound:
            raise _invalid(
                field, f"no uploaded file {file_id} (unknown or expired)", "input_file_not_found"
            ) from None
        if len(data) > max_bytes:
            raise InputTooLarge(field, max_bytes)
        return data


_HEX_VALUE = np.full(256, 255, dtype=np.uint8)
for _digit in b"0123456789":
    _HEX_VALUE[_digit] = _digit - ord("0")
for _offset, _digit in enumerate(b"abcdef"):
    _HEX_VALUE[_digit] = _HEX_VALUE[_digit - 32] = 10 + _offset


def _percent_decode(payload: str) -> bytes | None:
    """RFC 3986 percent-decoding of printable ASCII, vectorised; None when an escape is malformed."""
    size = len(payload)
    # Two bytes of padding that are neither '%' nor hex, so every position has two successors.
    text = np.frombuffer(payload.encode("ascii") + b"\0\0", dtype=np.uint8)
    escape = text[:size] == ord("%")
    if not escape.any():
        return payload.encode("ascii")
    digits = _HEX_VALUE[text]
    high, low = digits[1 : size + 1], digits[2 : size + 2]
    if (escape & ((high == 255) | (low == 255))).any():
        return None
    decoded = np.where(escape, high * 16 + low, text[:size]).astype(np.uint8)
    consumed = np.zeros(size, dtype=bool)
    consumed[1:] |= escape[:-1]
    consumed[2:] |= escape[:-2]
    return decoded[~consumed].tobytes()


def decode_data_uri(uri: str, *, field: str, max_bytes: int) -> bytes:
    """``data:[<media type>][;param=value]*[;base64],<payload>`` (RFC 2397) → bytes, at most ``max_bytes``.

    Linear in the URI's length with the work in C (regular expressions, ``base64``, numpy for the
    percent-escapes): a payload at the size cap takes well under a second, never a Python loop per character.
    """
    header, comma, payload = uri[len("data:") :].partition(",")
    if not comma:
        raise _invalid(field, "malformed data: URI (no ',' before the payload)", "invalid_data_uri")
    params = [part.strip() for part in header.split(";")] if header else []
    is_base64 = bool(params) and params[-1].lower() == "base64"
    if is_base64:
        params = params[:-1]
    media_type = params[0].lower() if params and "=" not in params[0] and params[0] else None
    if media_type is not None and not _DATA_MEDIA_TYPE.match(media_type):
        raise _invalid(field, "malformed data: URI (invalid media type)", "invalid_data_uri")
    if is_base64:
        # Refuse before decoding: the decoded size is about 3/4 of the text.
        if len(payload) // 4 * 3 > max_bytes + 2:
            raise InputTooLarge(field, max_bytes)
        if len(payload) % 4 or not _BASE64_PAYLOAD.fullmatch(payload):
            raise _invalid(field, "malformed data: URI (invalid base64 payload)", "invalid_data_uri")
        try:
            data = base64.b64decode(payload, validate=True)
        except binascii.Error:
            raise _invalid(
                field, "malformed data: URI (invalid base64 payload)", "invalid_data_uri"
            ) from None
    else:
        if _NOT_URI_CHAR.search(payload):
            raise _invalid(
                field, "malformed data: URI (characters must be percent-encoded)", "invalid_data_uri"
            )
        # Each %XX is 3 characters for 1 byte: the decoded size is known before decoding.
        if len(payload) - 2 * payload.count("%") > max_bytes:
            raise InputTooLarge(field, max_bytes)
        data = _percent_decode(payload)
        if data is None:
            raise _invalid(
                field, "malformed data: URI (a '%' not followed by two hex digits)", "invalid_data_uri"
            )
    if len(data) > max_bytes:
        raise InputTooLarge(field, max_bytes)
    if not data:
        raise _invalid(field, "the data: URI is empty", "invalid_data_uri")
    return data
