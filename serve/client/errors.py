"""The API's errors as exceptions: one class per kind of answer a program handles differently."""

from __future__ import annotations

from typing import Any

import httpx


class ApiError(Exception):
    """An error answer of the API: its HTTP status, machine code, message and per-field details."""

    def __init__(self, status: int, code: str, message: str, details: list[dict[str, Any]]) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details

    @property
    def fields(self) -> set[str]:
        """The request fields the error names (an invalid input, a missing field ...)."""
        return {str(detail["field"]) for detail in self.details if "field" in detail}


class InvalidRequest(ApiError):
    """400, 413, 415, 422: the request or one of its inputs cannot be used; sending it again will not help."""


class Unauthorized(ApiError):
    """401: no token, or one the server does not know."""


class NotFound(ApiError):
    """404: no such job for this token (another tenant's jobs are not found either)."""


class Gone(ApiError):
    """410: the job existed and its retention is over."""


class Conflict(ApiError):
    """409: e.g. cancelling a finished job, or an idempotency key reused with another body."""


class RetryLater(ApiError):
    """429 or 503: the queue, the tenant's share or the server is full or away; retry after a while."""

    def __init__(self, *args: Any, retry_after: float | None) -> None:
        super().__init__(*args)
        self.retry_after = retry_after


class JobFailed(Exception):
    """A job this client waited for ended ``failed`` (or ``cancelled``): its status body says why."""

    def __init__(self, result: Any) -> None:
        error = result.error
        reason = f"{error.code}: {error.message}" if error is not None else result.status
        super().__init__(f"job {result.request_id} ended {result.status} ({reason})")
        self.result = result


_BY_STATUS: dict[int, type[ApiError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    404: NotFound,
    409: Conflict,
    410: Gone,
    413: InvalidRequest,
    415: InvalidRequest,
    422: InvalidRequest,
}


def raise_for(response: httpx.Response) -> None:
    """Nothing for a 2xx; else the error the API's one error shape describes."""
    if response.is_success:
        return
    try:
        error = response.json()["error"]
        code, message, details = str(error["code"]), str(error["message"]), list(error.get("details", []))
    except (ValueError, KeyError, TypeError):
        code, message, details = "unexpected_response", response.text[:300], []
    args = (response.status_code, code, message, details)
    if response.status_code in (429, 503):
        retry_after = response.headers.get("Retry-After")
        raise RetryLater(*args, retry_after=float(retry_after) if retry_after else None)
    raise _BY_STATUS.get(response.status_code, ApiError)(*args)
