"""Where inputs, uploads and output videos live, and how clients download them.

Two backends behind one ``ObjectStore`` protocol: ``LocalStorage`` (a directory; downloads through the API at
``/v1/{key}``, i.e. ``/v1/outputs/...``, with an HMAC-signed, expiring link whose keys rotate,
``serve.storage.signing``) and
``S3Storage`` (any S3-compatible store; presigned URLs). Either way a download URL is unguessable and
expires, so an output is reachable only by whoever was handed the URL (or by its owner, through the
authenticated result endpoint). Storage raises its own errors (``serve.storage.errors``); the API maps them.

Retention: the job record's ``expires_at`` decides what the API serves (410 afterwards). The maintenance
loop deletes a finished job's objects with its record, and ``delete_older_than`` sweeps what no record names
(a local directory walk; for S3 a bucket lifecycle rule does it).
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from serve.storage.errors import (
    DownloadLinkExpired,
    DownloadLinkInvalid,
    DownloadsNotServed,
    InvalidStorageKey,
    ObjectNotFound,
    StorageError,
)
from serve.storage.keys import input_key, output_key, outputs_of, upload_key, validate_key
from serve.storage.local import DOWNLOAD_PATH, MAX_URL_SECONDS, LocalStorage
from serve.storage.s3 import S3Credentials, S3Storage
from serve.storage.signing import SigningKeys

if TYPE_CHECKING:
    from serve.config import StorageConfig

logger = logging.getLogger(__name__)

_KEY_FILE_NAME = ".signing_key"
_MIN_SIGNING_KEY_BYTES = 16

__all__ = [
    "DOWNLOAD_PATH",
    "MAX_URL_SECONDS",
    "DownloadLinkExpired",
    "DownloadLinkInvalid",
    "DownloadsNotServed",
    "InvalidStorageKey",
    "LocalStorage",
    "ObjectNotFound",
    "ObjectStore",
    "S3Credentials",
    "S3Storage",
    "SigningKeys",
    "StorageError",
    "build_storage",
    "input_key",
    "load_or_create_signing_key",
    "output_key",
    "outputs_of",
    "upload_key",
    "validate_key",
]


class ObjectStore(Protocol):
    """Object storage as the server uses it. Missing objects raise ``ObjectNotFound``."""

    def put_bytes(self, key: str, data: bytes, content_type: str) -> None: ...

    def put_file(self, key: str, path: str | os.PathLike[str], content_type: str) -> None: ...

    def get_bytes(self, key: str) -> bytes: ...

    def delete(self, key: str) -> None:
        """Idempotent: deleting a missing object is not an error."""

    def url_for(self, key: str, expires_in: int) -> str:
        """A download URL valid for ``expires_in`` seconds."""

    def open_download(self, key: str, query: Mapping[str, str]) -> Path:
        """The file a download link of this server points to (``DownloadsNotServed`` where the backend
        serves downloads itself)."""

    def keys_under(self, prefix: str) -> list[str]:
        """The keys of the objects under ``prefix`` (a key's leading segments), sorted."""

    def delete_older_than(self, cutoff: float) -> int:
        """Delete what was written before ``cutoff``; how many objects went."""


def load_or_create_signing_key(root: str | os.PathLike[str]) -> bytes:
    """The embedded default's key: random, created once under the storage root (mode 0600) and reused.

    Every replica on the machine and every restart then sign and verify with the same key. A cluster sets
    the key through the environment instead (replicas do not share a disk).
    """
    directory = Path(root).expanduser().resolve()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / _KEY_FILE_NAME
    if not path.exists():
        # Written in full under a temporary name, then linked into place, which fails if the file exists:
        # replicas starting together never read a half-written key, and all adopt the first one linked.
        temp = directory / f"{_KEY_FILE_NAME}.{secrets.token_hex(8)}.tmp"
        try:
            with os.fdopen(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as handle:
                handle.write(secrets.token_hex(32).encode())
            os.link(temp, path)
            logger.info("created a new URL signing key in %s", path)
        except FileExistsError:
            pass
        finally:
            temp.unlink(missing_ok=True)
    key = path.read_bytes()
    if len(key) < _MIN_SIGNING_KEY_BYTES:
        raise ValueError(f"the signing key file {path} is too short; delete it to make a new one")
    return key


def signing_keys(config: StorageConfig, environ: Mapping[str, str]) -> SigningKeys:
    """The current key from ``signing_key_env`` (else the storage root's key file), and the previous keys,
    comma-separated, from ``previous_signing_keys_env``: they still verify the links they signed."""
    current = environ.get(config.signing_key_env) or load_or_create_signing_key(config.root)
    previous = [
        key.strip() for key in environ.get(config.previous_signing_keys_env, "").split(",") if key.strip()
    ]
    return SigningKeys(current, previous)


def build_storage(
    config: StorageConfig,
    *,
    public_base_url: str | None = None,
    environ: Mapping[str, str] | None = None,
    clock: Callable[[], float] = time.time,
) -> ObjectStore:
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
    keys = signing_keys(config, environ)
    return LocalStorage(config.root, signing_keys=keys, public_base_url=public_base_url, clock=clock)
