"""Storage's own refusals. No HTTP here: ``serve/api/errors.py`` maps each to its status code."""

from __future__ import annotations


class StorageError(Exception):
    """Base class of storage's refusals."""


class ObjectNotFound(StorageError):
    """A key that holds no object (never written, deleted, or past retention)."""


class InvalidStorageKey(StorageError, ValueError):
    """A key that could escape its place (traversal, absolute, odd characters): a bug or an attack."""


class DownloadLinkInvalid(StorageError):
    """A download link the server did not issue (forged, tampered, malformed, or signed by a retired key)."""


class DownloadLinkExpired(StorageError):
    """A genuine download link past its expiry."""


class DownloadsNotServed(StorageError):
    """This backend serves downloads itself (presigned URLs): nothing is downloaded through the API."""
