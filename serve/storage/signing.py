"""Signed download links of ``LocalStorage``, with key rotation.

The current key signs; it and the previous keys verify, so a rotated key keeps honouring the links it
signed until they expire (URLs live at most ``url_ttl_seconds``). A link names its key by id (the first
16 hex digits of the key's SHA-256), so verifying costs one HMAC whatever the number of keys. Rotation:
move the current key into the previous keys, set a new current one, roll the pods; once ``url_ttl_seconds``
has passed, drop the old key.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Sequence

_MIN_KEY_BYTES = 16
_SIGNATURE = re.compile(r"^[0-9a-f]{64}\Z")
_KEY_ID = re.compile(r"^[0-9a-f]{16}\Z")


def key_id(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:16]


class SigningKeys:
    def __init__(self, current: bytes | str, previous: Sequence[bytes | str] = ()) -> None:
        keys = [_bytes(key) for key in (current, *previous)]
        for position, key in enumerate(keys):
            if len(key) < _MIN_KEY_BYTES:
                which = "the URL signing key" if position == 0 else f"previous signing key #{position}"
                raise ValueError(f"{which} must be at least {_MIN_KEY_BYTES} bytes")
        self._keys = {key_id(key): key for key in reversed(keys)}
        self.current_id = key_id(keys[0])

    def sign(self, key: str, expires: int) -> tuple[str, str]:
        """(key id, signature) of a link to ``key`` valid until ``expires``."""
        return self.current_id, _signature(self._keys[self.current_id], key, expires)

    def verify(self, key: str, expires: int, kid: str, sig: str) -> bool:
        """Whether one of the keys signed this link (an unknown key id never verifies)."""
        if not _SIGNATURE.match(sig) or not _KEY_ID.match(kid) or kid not in self._keys:
            return False
        return hmac.compare_digest(_signature(self._keys[kid], key, expires), sig)


def _bytes(key: bytes | str) -> bytes:
    return key.encode("utf-8") if isinstance(key, str) else bytes(key)


def _signature(secret: bytes, key: str, expires: int) -> str:
    return hmac.new(secret, f"{key}\n{expires}".encode(), hashlib.sha256).hexdigest()
