"""Storage keys: relative, ``/``-separated segments of a fixed charset, none empty, none starting with a
dot. That excludes ``..`` and hidden files; ``LocalStorage`` also refuses any path that resolves outside its
root (a symlink planted inside)."""

from __future__ import annotations

import re

from serve.storage.errors import InvalidStorageKey

_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\Z")
_MAX_KEY_CHARS = 512
_MAX_SEGMENTS = 8


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


def outputs_of(tenant: str, request_id: str) -> str:
    """``outputs/{tenant}/{request_id}``: where every run of one job writes its output."""
    return f"outputs/{_segment(tenant, 'tenant')}/{_segment(request_id, 'request id')}"


def output_key(tenant: str, request_id: str, run: str) -> str:
    """``outputs/{tenant}/{request_id}/{run}/video.mp4``: each run of a job writes its own object, so a run
    that lost its lease can never overwrite the output of the run that won."""
    return f"{outputs_of(tenant, request_id)}/{_segment(run, 'run')}/video.mp4"


def upload_key(tenant: str, file_id: str) -> str:
    return f"uploads/{_segment(tenant, 'tenant')}/{_segment(file_id, 'file id')}"
