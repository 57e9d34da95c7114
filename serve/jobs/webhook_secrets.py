"""A tenant's webhook signing secrets (Standard Webhooks ``whsec_`` keys), kept in the job store.

The tenant reads its current secret from the API and can rotate it. After a rotation the previous secret
still signs alongside the new one for ``ROTATION_GRACE_SECONDS`` (``webhook-signature`` then carries two
``v1,`` signatures, which Standard Webhooks verifiers accept), so receivers can switch without losing events.
"""

from __future__ import annotations

import base64
import json
import secrets
from dataclasses import dataclass

ROTATION_GRACE_SECONDS = 24 * 3600.0
_PREFIX = "whsec_"


def new_secret() -> str:
    return _PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


@dataclass(frozen=True)
class WebhookSecrets:
    current: str
    previous: str | None = None
    rotated_at: float | None = None

    @classmethod
    def new(cls) -> WebhookSecrets:
        return cls(new_secret())

    def rotated(self, now: float) -> WebhookSecrets:
        return WebhookSecrets(new_secret(), previous=self.current, rotated_at=now)

    def signing(self, now: float) -> list[str]:
        """The secrets that sign a delivery now: the current one, and the previous one in its grace period."""
        in_grace = self.previous is not None and self.rotated_at is not None
        if in_grace and now - self.rotated_at < ROTATION_GRACE_SECONDS:
            return [self.current, self.previous]
        return [self.current]

    def to_json(self) -> str:
        return json.dumps({"current": self.current, "previous": self.previous, "rotated_at": self.rotated_at})

    @classmethod
    def from_json(cls, text: str) -> WebhookSecrets:
        data = json.loads(text)
        return cls(data["current"], data.get("previous"), data.get("rotated_at"))
