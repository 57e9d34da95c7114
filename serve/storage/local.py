"""A directory tree as object storage, downloads through the API with signed, expiring links."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

from serve.storage.errors import DownloadLinkExpired, DownloadLinkInvalid, InvalidStorageKey, ObjectNotFound
from serve.storage.keys import validate_key
from serve.storage.signing import SigningKeys

logger = logging.getLogger(__name__)

# A download URL is this prefix and the object's key: ``/v1/outputs/{tenant}/...`` for an output.
DOWNLOAD_PATH = "/v1"
# S3 refuses presigned URLs valid for longer than 7 days; the local links keep the same bound.
MAX_URL_SECONDS = 7 * 24 * 3600
_CREATE_TRIES = 3
_EXPIRES = re.compile(r"^[0-9]{1,12}\Z")


def check_expires_in(expires_in: int) -> int:
    if (
        isinstance(expires_in, bool)
        or not isinstance(expires_in, int)
        or not 1 <= expires_in <= MAX_URL_SECONDS
    ):
        raise ValueError(f"expires_in must be 1..{MAX_URL_SECONDS} seconds, got {expires_in!r}")
    return expires_in


class LocalStorage:
    """A directory tree; download URLs are ``{public_base_url}/v1/{key}?expires=..&kid=..&sig=..`` (keys of
    outputs start with ``outputs/``, so the links read ``/v1/outputs/...``).

    ``public_base_url`` may be empty: URLs then start with ``/v1/outputs`` and the API joins them to the
    request's own base URL. The route serving that path calls ``open_download`` with the key.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        signing_keys: SigningKeys,
        public_base_url: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._signing = signing_keys
        self._base = (public_base_url or "").rstrip("/")
        self._clock = clock

    def __repr__(self) -> str:
        return f"LocalStorage(root={str(self.root)!r}, public_base_url={self._base!r})"

    def _path(self, key: str) -> Path:
        path = self.root / validate_key(key)
        # Resolving follows any symlink on the way; whatever it points to must still be inside the root.
        if not path.resolve().is_relative_to(self.root):
            raise InvalidStorageKey(f"storage key {key!r} resolves outside the storage root")
        return path

    def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        self._write(key, lambda handle: handle.write(data))

    def put_file(self, key: str, path: str | os.PathLike[str], content_type: str) -> None:
        with open(path, "rb") as source:
            self._write(key, lambda handle: shutil.copyfileobj(source, handle, 1024 * 1024))

    def _write(self, key: str, fill: Callable[[Any], object]) -> None:
        path = self._path(key)
        # Write then rename, so readers never see half a file; the temp name starts with a dot, which no
        # key segment can, so it never collides with an object.
        temp = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
        try:
            with self._create(key, temp) as handle:
                fill(handle)
            os.replace(temp, path)
        finally:
            temp.unlink(missing_ok=True)

    def _create(self, key: str, temp: Path) -> Any:
        """``temp`` opened for writing, its folders made. The retention sweep removes empty folders, so one
        made here can go before the file is in it: then they are made again."""
        tries = 0
        while True:
            tries += 1
            temp.parent.mkdir(parents=True, exist_ok=True)
            self._path(key)  # re-check: mkdir may have walked through a directory symlink planted meanwhile
            try:
                return open(temp, "xb")
            except FileNotFoundError:
                if tries == _CREATE_TRIES:
                    raise

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(key) from None

    def delete(self, key: str) -> None:
        # As in get_bytes: a directory, or a path through a file, holds no object; nothing to delete.
        with contextlib.suppress(FileNotFoundError, IsADirectoryError, NotADirectoryError):
            self._path(key).unlink()

    # -- downloads -----------------------------------------------------------------------------------------

    def url_for(self, key: str, expires_in: int) -> str:
        validate_key(key)
        expires = int(self._clock()) + check_expires_in(expires_in)
        kid, sig = self._signing.sign(key, expires)
        return f"{self._base}{DOWNLOAD_PATH}/{quote(key, safe='/')}?expires={expires}&kid={kid}&sig={sig}"

    def open_download(self, key: str, query: Mapping[str, str]) -> Path:
        """The file a download link points to, once its signature checks out.

        ``DownloadLinkInvalid`` for any link the server did not issue (checked before the expiry, so only a
        genuine link can ever learn it expired), ``DownloadLinkExpired`` for a genuine one past its time.
        """
        expires, kid, sig = (query.get(name, "") for name in ("expires", "kid", "sig"))
        if not _EXPIRES.match(expires):
            raise DownloadLinkInvalid()
        try:
            validate_key(key)
        except InvalidStorageKey:
            raise DownloadLinkInvalid() from None
        if not self._signing.verify(key, int(expires), kid, sig):
            raise DownloadLinkInvalid()
        if self._clock() >= int(expires):
            raise DownloadLinkExpired()
        path = self._path(key)
        if not path.is_file():
            raise ObjectNotFound(key)
        return path

    # -- retention -----------------------------------------------------------------------------------------

    def keys_under(self, prefix: str) -> list[str]:
        base = self._path(prefix)
        if not base.is_dir():
            return []
        return sorted(
            path.relative_to(self.root).as_posix()
            for path in base.rglob("*")
            if path.is_file() and not path.name.startswith(".")  # a write in progress: not an object yet
        )

    def delete_older_than(self, cutoff: float) -> int:
        """Delete objects last written before ``cutoff`` (epoch seconds) and the directories left empty: the
        backstop for objects no record names any more (a run that crashed after its upload)."""
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
