"""Input references → bytes: what ``284_image`` and ``125_audio`` may name.

A reference is one of: an ``https://`` URL (the safe fetcher; ``http://`` only in the development mode), a
``data:`` URI (base64 or percent-encoded), the id of a file this tenant uploaded (``file_`` + 32 lowercase
hex digits; another tenant's id is simply not found), or one of the seed page's example names, which
resolve to the example assets shipped in ``pipeline/assets``. Anything else is a 422 naming the field.
Whether the bytes are really an image or audio is decided afterwards by ``serve.inputs.probe``.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import secrets
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Literal
from urllib.parse import unquote_to_bytes

import anyio

import pipeline.errors
from serve.api.errors import ApiError, InternalError, ObjectNotFound, ValidationFailed
from serve.api.schemas import EXAMPLE_AUDIO, EXAMPLE_IMAGE
from serve.inputs.fetcher import Fetcher, input_too_large
from serve.storage import Storage, upload_key

logger = logging.getLogger(__name__)


class InputKind(str, Enum):
    IMAGE = "image"
    AUDIO = "audio"

    @property
    def field(self) -> str:
        """The request field that carries this input."""
        return _FIELDS[self]


_FIELDS = {InputKind.IMAGE: "284_image", InputKind.AUDIO: "125_audio"}
# Example name → file in pipeline/assets, per kind: the audio example is not an image reference.
EXAMPLE_ASSETS = {
    InputKind.IMAGE: {EXAMPLE_IMAGE: "portrait.png"},
    InputKind.AUDIO: {EXAMPLE_AUDIO: "speech.mp3"},
}
# Next to the pipeline's modules (package data of the wheel). Located through a real module: ``pipeline`` is a
# namespace package, which importlib.resources handles unreliably.
EXAMPLE_ASSETS_DIR = Path(pipeline.errors.__file__).resolve().parent / "assets"
FILE_ID_PATTERN = re.compile(r"^file_[0-9a-f]{32}\Z")
_DATA_MEDIA_TYPE = re.compile(r"^[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+$")
_BASE64_CHARS = re.compile(rb"^[A-Za-z0-9+/]*={0,2}\Z")

Source = Literal["url", "data", "upload", "example"]


def new_file_id() -> str:
    """An unguessable upload id in the format ``FILE_ID_PATTERN`` accepts."""
    return f"file_{secrets.token_hex(16)}"


def is_file_id(value: str) -> bool:
    return bool(FILE_ID_PATTERN.match(value))


@dataclass(frozen=True)
class ResolvedInput:
    data: bytes
    name: str  # for messages and logs: the file name, URL file name or example name
    source: Source
    content_type: str | None = None  # claimed by the client or server; never trusted


def _invalid(field: str, message: str, code: str = "invalid_input_reference") -> ApiError:
    return ValidationFailed(f"{field}: {message}", code=code, details=[{"field": field, "message": message}])


def _preview(reference: str) -> str:
    return repr(reference if len(reference) <= 60 else reference[:57] + "...")


class InputResolver:
    """Resolves references for one server; the byte caps are the fetcher's policy."""

    def __init__(self, fetcher: Fetcher, storage: Storage) -> None:
        self._fetcher = fetcher
        self._storage = storage

    def max_bytes(self, kind: InputKind) -> int:
        policy = self._fetcher.policy
        return policy.max_image_bytes if kind is InputKind.IMAGE else policy.max_audio_bytes

    async def resolve(self, reference: str, *, kind: InputKind, tenant: str) -> ResolvedInput:
        field = kind.field
        reference = reference.strip()
        lowered = reference[:8].lower()
        if lowered.startswith(("https://", "http://")):
            fetched = await self._fetcher.fetch(reference, field=field, max_bytes=self.max_bytes(kind))
            return ResolvedInput(fetched.data, fetched.filename, "url", fetched.content_type)
        if lowered.startswith("data:"):
            return decode_data_uri(reference, field=field, max_bytes=self.max_bytes(kind))
        if reference.startswith("file_"):
            return await self._uploaded(reference, field, tenant, self.max_bytes(kind))
        asset = EXAMPLE_ASSETS[kind].get(reference)
        if asset is not None:
            return await self._example(reference, asset)
        if "://" in reference:
            scheme = reference.split("://", 1)[0][:20]
            raise _invalid(field, f"URLs with the scheme {scheme!r} are not fetched; use https://")
        examples = ", ".join(repr(name) for name in EXAMPLE_ASSETS[kind])
        raise _invalid(
            field,
            f"{_preview(reference)} is not an https:// URL, a data: URI, an uploaded file id (file_...) "
            f"or the example {examples}",
        )

    async def _uploaded(self, file_id: str, field: str, tenant: str, max_bytes: int) -> ResolvedInput:
        if not is_file_id(file_id):
            raise _invalid(field, f"{_preview(file_id)} is not a valid file id ('file_' and 32 hex digits)")
        try:
            data = await anyio.to_thread.run_sync(self._storage.get_bytes, upload_key(tenant, file_id))
        except ObjectNotFound:
            raise _invalid(
                field, f"no uploaded file {file_id} (unknown or expired)", "input_file_not_found"
            ) from None
        if len(data) > max_bytes:
            raise input_too_large(field, max_bytes)
        return ResolvedInput(data, file_id, "upload")

    @staticmethod
    async def _example(name: str, asset: str) -> ResolvedInput:
        try:
            data = await anyio.to_thread.run_sync((EXAMPLE_ASSETS_DIR / asset).read_bytes)
        except OSError:
            logger.error("example asset %s is missing from pipeline/assets", asset)
            raise InternalError() from None
        return ResolvedInput(data, name, "example")


def decode_data_uri(uri: str, *, field: str, max_bytes: int) -> ResolvedInput:
    """``data:[<media type>][;param=value]*[;base64],<payload>`` (RFC 2397) → bytes, at most ``max_bytes``."""
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
        raw = payload.encode("ascii", errors="replace")
        # Refuse before decoding: the decoded size is about 3/4 of the text.
        if len(raw) // 4 * 3 > max_bytes + 2:
            raise input_too_large(field, max_bytes)
        if len(raw) % 4 or not _BASE64_CHARS.match(raw):
            raise _invalid(field, "malformed data: URI (invalid base64 payload)", "invalid_data_uri")
        try:
            data = base64.b64decode(raw, validate=True)
        except binascii.Error:
            raise _invalid(
                field, "malformed data: URI (invalid base64 payload)", "invalid_data_uri"
            ) from None
    else:
        if any(ord(char) > 0x7E or ord(char) < 0x20 for char in payload):
            raise _invalid(
                field, "malformed data: URI (characters must be percent-encoded)", "invalid_data_uri"
            )
        data = unquote_to_bytes(payload)
    if len(data) > max_bytes:
        raise input_too_large(field, max_bytes)
    if not data:
        raise _invalid(field, "the data: URI is empty", "invalid_data_uri")
    return ResolvedInput(data, f"{field} (data: URI)", "data", media_type)
