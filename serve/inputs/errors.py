"""Why an input is refused. No HTTP here: ``serve/api/errors.py`` maps these to 413, 415 and 422."""

from __future__ import annotations

from typing import Any


class InputRejected(Exception):
    """An input the server will not use: its field, a stable code, the reason in words (no input echoed)."""

    def __init__(self, field: str, reason: str, *, code: str, **detail: Any) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason
        self.code = code
        self.detail = detail

    @property
    def message(self) -> str:
        return f"{self.field}: {self.reason}"


class InputTooLarge(InputRejected):
    def __init__(self, field: str, limit_bytes: int) -> None:
        super().__init__(
            field,
            f"the input is larger than the {limit_bytes} byte limit",
            code="input_too_large",
            limit_bytes=limit_bytes,
        )


class NotMedia(InputRejected):
    """The bytes are not media of the expected kind at all (judged from the bytes, never a name)."""
