"""Where inputs, uploads and output videos live, and how clients download them.

Two backends behind one ``Storage`` protocol: ``LocalStorage`` (a directory; downloads through the API at
``/v1/outputs/{key}`` with an HMAC-signed, expiring query) and ``S3Storage`` (any S3-compatible store;
downloads through presigned URLs). Either way a download URL is unguessable and expires, so an output is
reachable only by whoever was handed the URL (or by its owner, through the authenticated result endpoint).

Keys are built by ``input_key``/``output_key``/``upload_key`` and always validated: relative, ``/``-separated
segments of a fixed charset, none empty, none starting with a dot. That excludes ``..`` and hidden files, and
``LocalStorage`` additionally refuses any path that resolves outside its root (a symlink planted inside).

Retention: the job record's ``expires_at`` decides what the API serves (410 afterwards, even if bytes are
still stored). Deleting the bytes is separate: ``LocalStorage.delete_older_than`` is meant for the
maintenance loop; for S3, configure a bucket lifecycle rule expiring ``inputs/``, ``outputs/`` and
``uploads/`` after the retention period (the store does it better than a sweep could).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable
from urllib.parse import quote

from serve.api.errors import Gone, NotFound, ObjectNotFound

if TYPE_CHECKING:
    from serve.config import StorageConfig

logger = logging.getLogger(__name__)

_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\Z")
_MAX_KEY_CHARS = 512
_MAX_SEGMENTS = 8
_SIGNATURE = re.compile(r"^[0-9a-f]{64}\Z")
_EXPIRES = re.compile(r"^[0-9]{1,12}\Z")
# S3 refuses presigned URLs valid for longer than 7 days.
MAX_URL_SECONDS = 7 * 24 * 3600
_MIN_SIGNING_KEY_BYTES = 16
_KEY_FILE_NAME = ".signing_key"
DOWNLOAD_PATH = "/v1/outputs"


class InvalidStorageKey(ValueError):
    """A key that could escape its place (traversal, absolute, odd characters): a bug or an attack."""


def validate_key(key: str) -> str:
    if not isinstance(key, str) or not key or len(key) > _MAX_KEY_CHARS:
        raise InvalidStorageKey("a storage key must be a non-empty string of at most 512 characters")
    segments = key.split("/")
    if len(segments) > _MAX_SEGMENTS or not all(_SEGMENT.match(segment) for segment in segments):
        raise InvalidStorageKey(
            f"invalid storage key {key[:80]!r}: '/'-separated segments of letters, digits, '_', '.', '-', "
            "each starting with a letter or digit"
        )
    return key


def _segment(value: str, what: str) -> str:
    if not isinstance(value, str) or not _SEGMENT.match(value):
        raise InvalidStorageKey(f"invalid {what} for a storage key: {value!r}")
    return value


def input_key(tenant: str, request_id: str, role: str) -> str:
    """``inputs/{tenant}/{request_id}/{role}``; role is ``image`` or ``audio``."""
    return (
        f"inputs/{_segment(tenant, 'tenant')}/{_segment(request_id, 'request id')}/{_segment(role, 'role')}"
    )


def output_key(tenant: str, request_id: str, filename: str = "video.mp4") -> str:
    name = _segment(filename, "file name")
    return f"outputs/{_segment(tenant, 'tenant')}/{_segment(request_id, 'request id')}/{name}"


def upload_key(tenant: str, file_id: str) -> str:
    return f"uploads/{_segment(tenant, 'tenant')}/{_segment(file_id, 'file id')}"


@runtime_checkable
class Storage(Protocol):
    """Object storage as the server uses it. Missing objects raise ``ObjectNotFound`` (a 404)."""

    def put_bytes(self, key: str, data: bytes, content_type: str) -> None: ...

    def put_file(self, key: str, path: str | os.PathLike[str], content_type: str) -> None: ...

    def get_bytes(self, key: str) -> bytes: ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None:
        """Idempotent: deleting a missing object is not an error."""

    def url_for(self, key: str, expires_in: int) -> str:
        """A download URL valid for ``expires_in`` seconds."""

    def local_path(self, key: str) -> Path | None:
        """The object's file when the backend is a local directory, else ``None``."""


def _check_expires_in(expires_in: int) -> int:
    if (
        isinstance(expires_in, bool)
        or not isinstance(expires_in, int)
        or not 1 <= expires_in <= MAX_URL_SECONDS
    ):
        raise ValueError(f"expires_in must be 1..{MAX_URL_SECONDS} seconds, got {expires_in!r}")
    return expires_in


class LocalStorage:
    """A directory tree; download URLs are ``{public_base_url}/v1/outputs/{key}?expires=..&sig=..``.

    ``public_base_url`` may be empty: URLs then start with ``/v1/outputs`` and the API joins them to the
    request's own base URL. The route serving that path calls ``verify_signature`` and then ``local_path``.
    Content types are not stored: the route derives them from the key's suffix (``video.mp4``).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        signing_key: bytes | str,
        public_base_url: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        key_bytes = signing_key.encode("utf-8") if isinstance(signing_key, str) else bytes(signing_key)
        if len(key_bytes) < _MIN_SIGNING_KEY_BYTES:
            raise ValueError(f"the URL signing key must be at least {_MIN_SIGNING_KEY_BYTES} bytes")
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._signing_key = key_bytes
        self._base = (public_base_url or "").rstrip("/")
        self._clock = clock

    def __repr__(self) -> str:
        return f"LocalStorage(root={str(self.root)!r}, public_base_url={self._base!r})"

    # -- paths ---------------------------------------------------------------------------------------------

    def _path(self, key: str) -> Path:
        path = self.root / validate_key(key)
        # Resolving follows any symlink on the way; whatever it points to must still be inside the root.
        resolved = path.resolve()
        if not resolved.is_relative_to(self.root):
            raise InvalidStorageKey(f"storage key {key!r} resolves outside the storage root")
        return path

    def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        self._write(key, lambda handle: handle.write(data))

    def put_file(self, key: str, path: str | os.PathLike[str], content_type: str) -> None:
        with open(path, "rb") as source:
            self._write(key, lambda handle: shutil.copyfileobj(source, handle, 1024 * 1024))

    def _write(self, key: str, fill: Callable[[Any], object]) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path(key)  # re-check: mkdir may have walked through a directory symlink planted meanwhile
        # Write then rename, so readers never see half a file; the temp name starts with a dot, which no
        # key segment can, so it never collides with an object.
        temp = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
        try:
            with open(temp, "xb") as handle:
                fill(handle)
            os.replace(temp, path)
        finally:
            temp.unlink(missing_ok=True)

    def get_bytes(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound() from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def local_path(self, key: str) -> Path:
        path = self._path(key)
        if not path.is_file():
            raise ObjectNotFound()
        return path

    # -- signed URLs ---------------------------------------------------------------------------------------

    def _signature(self, key: str, expires: int) -> str:
        return hmac.new(self._signing_key, f"{key}\n{expires}".encode(), hashlib.sha256).hexdigest()

    def url_for(self, key: str, expires_in: int) -> str:
        validate_key(key)
        expires = int(self._clock()) + _check_expires_in(expires_in)
        query = f"expires={expires}&sig={self._signature(key, expires)}"
        return f"{self._base}{DOWNLOAD_PATH}/{quote(key, safe='/')}?{query}"

    def verify_signature(self, key: str, expires: str | int, sig: str) -> None:
        """Accept a download, or raise: 404 for any bad or forged link, 410 for a genuine but expired one.

        A bad signature answers 404 rather than 403 so a forged URL learns nothing about which keys exist.
        The signature is checked before the expiry, so only a link the server issued can ever see a 410.
        """
        expires_text = str(expires)
        if (
            not isinstance(sig, str)
            or not _SIGNATURE.match(sig)
            or not _EXPIRES.match(expires_text)
            or isinstance(expires, bool)
        ):
            raise NotFound()
        try:
            validate_key(key)
        except InvalidStorageKey:
            raise NotFound() from None
        expected = self._signature(key, int(expires_text))
        if not hmac.compare_digest(expected, sig):
            raise NotFound()
        if self._clock() >= int(expires_text):
            raise Gone("This download link has expired.")

    # -- retention -----------------------------------------------------------------------------------------

    def delete_older_than(self, cutoff: float) -> int:
        """Delete objects last written before ``cutoff`` (epoch seconds) and the directories left empty."""
        deleted = 0
        for directory, _subdirs, files in os.walk(self.root, topdown=False):
            base = Path(directory)
            for name in files:
                path = base / name
                if name.startswith(".") and base == self.root:
                    continue  # the signing key file
                try:
                    if path.lstat().st_mtime < cutoff:
                        path.unlink()
                        deleted += 1
                except FileNotFoundError:
                    continue
            if base != self.root:
                with contextlib.suppress(OSError):  # not empty
                    base.rmdir()
        if deleted:
            logger.info("retention: deleted %d stored objects older than %.0f", deleted, cutoff)
        return deleted


@dataclass(frozen=True)
class S3Credentials:
    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)


class S3Storage:
    """An S3-compatible bucket (AWS, MinIO, R2 ...); downloads are presigned GET URLs (SigV4)."""

    def __init__(
        self,
        bucket: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        credentials: S3Credentials | None = None,
        prefix: str = "",
        client: Any | None = None,
    ) -> None:
        """Without ``credentials`` boto3's default chain is used; ``client`` replaces the boto3 client."""
        if not bucket:
            raise ValueError("S3Storage needs a bucket")
        self.bucket = bucket
        self._prefix = f"{validate_key(prefix.strip('/'))}/" if prefix.strip("/") else ""
        if client is None:
            import boto3
            from botocore.config import Config

            kwargs: dict[str, Any] = {}
            if credentials is not None:
                kwargs = {
                    "aws_access_key_id": credentials.access_key_id,
                    "aws_secret_access_key": credentials.secret_access_key,
                    "aws_session_token": credentials.session_token,
                }
            # Path-style addressing: S3-compatible stores behind a custom endpoint rarely have
            # per-bucket DNS names.
            config = Config(
                signature_version="s3v4",
                retries={"max_attempts": 5, "mode": "standard"},
                s3={"addressing_style": "path" if endpoint_url else "auto"},
            )
            client = boto3.client(
                "s3", endpoint_url=endpoint_url, region_name=region, config=config, **kwargs
            )
        self._client = client

    def __repr__(self) -> str:
        return f"S3Storage(bucket={self.bucket!r}, prefix={self._prefix!r})"

    def _object(self, key: str) -> str:
        return self._prefix + validate_key(key)

    def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        self._client.put_object(
            Bucket=self.bucket, Key=self._object(key), Body=data, ContentType=content_type
        )

    def put_file(self, key: str, path: str | os.PathLike[str], content_type: str) -> None:
        # upload_file switches to multipart for large files.
        self._client.upload_file(
            os.fspath(path), self.bucket, self._object(key), ExtraArgs={"ContentType": content_type}
        )

    def get_bytes(self, key: str) -> bytes:
        from botocore.exceptions import ClientError

        try:
            response = self._client.get_object(Bucket=self.bucket, Key=self._object(key))
        except ClientError as error:
            if _is_missing(error):
                raise ObjectNotFound() from None
            raise
        body = response["Body"]
        try:
            return body.read()
        finally:
            body.close()

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self._client.head_object(Bucket=self.bucket, Key=self._object(key))
        except ClientError as error:
            if _is_missing(error):
                return False
            raise
        return True

    def delete(self, key: str) -> None:
        self._client.delete_object(Bucket=self.bucket, Key=self._object(key))

    def url_for(self, key: str, expires_in: int) -> str:
        return self._client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": self._object(key)},
            ExpiresIn=_check_expires_in(expires_in),
        )

    def local_path(self, key: str) -> None:
        validate_key(key)
        return None


def _is_missing(error: Any) -> bool:
    code = str(error.response.get("Error", {}).get("Code", ""))
    return code in {"404", "NoSuchKey", "NotFound"}


# -- construction from the app config ------------------------------------------------------------------------


def load_or_create_signing_key(root: str | os.PathLike[str]) -> bytes:
    """The embedded default's key: random, created once under the storage root (mode 0600) and reused.

    Every replica on the machine and every restart then sign and verify with the same key. A cluster sets
    the key through the environment instead (replicas do not share a disk).
    """
    directory = Path(root).expanduser().resolve()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / _KEY_FILE_NAME
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        key = path.read_bytes()
        if len(key) < _MIN_SIGNING_KEY_BYTES:
            raise ValueError(
                f"the signing key file {path} is too short; delete it to make a new one"
            ) from None
        return key
    with os.fdopen(descriptor, "wb") as handle:
        key = secrets.token_hex(32).encode()
        handle.write(key)
    logger.info("created a new URL signing key in %s", path)
    return key


def build_storage(
    config: StorageConfig, *, public_base_url: str | None = None, environ: Mapping[str, str] | None = None
) -> Storage:
    """The backend ``config`` describes; secrets come from the environment variables it names."""
    environ = os.environ if environ is None else environ
    if config.kind == "s3":
        access_key = environ.get(config.access_key_env)
        secret_key = environ.get(config.secret_key_env)
        credentials = S3Credentials(access_key, secret_key) if access_key and secret_key else None
        return S3Storage(
            config.bucket or "",
            endpoint_url=config.endpoint_url,
            region=config.region,
            credentials=credentials,
            prefix=config.prefix,
        )
    signing_key = environ.get(config.signing_key_env) or load_or_create_signing_key(config.root)
    return LocalStorage(config.root, signing_key=signing_key, public_base_url=public_base_url)
