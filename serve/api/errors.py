"""Every error a client can see, and the one place that turns errors into HTTP responses.

Code raises an ``ApiError`` subclass (or lets a pipeline, validation or routing error escape); the handlers
installed by ``install_error_handlers`` render all of them, and anything unexpected, as the single JSON shape
of the API: ``{"error": {"code": ..., "message": ..., "details": [...]}}``. Messages are written for the
client; nothing internal (tracebacks, file paths, upstream exception text) is ever put in one, and request
inputs are never echoed back (a data: URI can be megabytes).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve.api.schemas import ErrorBody, ErrorDetail
from serve.auth import AuthenticationFailed
from serve.inputs.errors import InputRejected, InputTooLarge, NotMedia
from serve.jobs.errors import (
    AppDraining,
    CancelConflict,
    IdempotencyConflict,
    JobGone,
    JobNotFound,
    QueueFull,
    TenantQueueFull,
    UploadQuotaExceeded,
)
from serve.storage.errors import (
    DownloadLinkExpired,
    DownloadLinkInvalid,
    DownloadsNotServed,
    InvalidStorageKey,
    ObjectNotFound,
)

logger = logging.getLogger(__name__)

# The realm names what the token is for; RFC 6750 §3 asks for error="invalid_token" once a token was sent.
_REALM = 'Bearer realm="infinitetalk"'


class ApiError(Exception):
    """An error with its HTTP status, a stable machine ``code``, a sentence for humans and structured details.

    Subclasses fix the status and a default code; a raise site may pass a more specific ``code`` (for example
    ``input_too_large`` for a ``PayloadTooLarge``) without inventing a new class.
    """

    status: int = 500
    default_code: str = "internal_error"
    default_message: str = "The server failed to handle the request."

    def __init__(
        self,
        message: str | None = None,
        *,
        code: str | None = None,
        details: Iterable[Mapping[str, Any]] = (),
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.message = message or self.default_message
        self.code = code or self.default_code
        self.details = [dict(detail) for detail in details]
        self.headers = dict(headers or {})
        super().__init__(self.message)

    def to_body(self) -> dict[str, Any]:
        return ErrorBody(
            error=ErrorDetail(code=self.code, message=self.message, details=self.details)
        ).model_dump()

    def to_response(self) -> JSONResponse:
        return JSONResponse(self.to_body(), status_code=self.status, headers=self.headers or None)


class BadRequest(ApiError):
    status = 400
    default_code = "bad_request"
    default_message = "The request is malformed."


class MalformedJson(BadRequest):
    default_code = "malformed_json"
    default_message = "The request body is not valid JSON."


class Unauthorized(ApiError):
    """Missing, malformed or unknown token. ``WWW-Authenticate`` tells clients to send a Bearer token."""

    status = 401
    default_code = "unauthorized"
    default_message = "A valid 'Authorization: Bearer <token>' header is required."

    def __init__(
        self, message: str | None = None, *, token_sent: bool = False, code: str | None = None
    ) -> None:
        challenge = f'{_REALM}, error="invalid_token"' if token_sent else _REALM
        super().__init__(message, code=code, headers={"WWW-Authenticate": challenge})


class NotFound(ApiError):
    """Also the answer for another tenant's request or file, so ids never leak whether they exist."""

    status = 404
    default_code = "not_found"
    default_message = "Not found."


class MethodNotAllowed(ApiError):
    status = 405
    default_code = "method_not_allowed"
    default_message = "This method is not allowed on this path."


class Conflict(ApiError):
    status = 409
    default_code = "conflict"
    default_message = "The request conflicts with the current state."

    @classmethod
    def not_cancellable(cls, request_id: str, status: str) -> Conflict:
        """Cancel of a job that already finished; ``details`` carries its current state."""
        return cls(
            f"Request {request_id} is {status} and can no longer be cancelled; only queued and running "
            "requests can.",
            code="not_cancellable",
            details=[{"request_id": request_id, "status": status}],
        )

    @classmethod
    def idempotency_key_reused(cls, request_id: str) -> Conflict:
        return cls(
            "This Idempotency-Key was already used with a different request body.",
            code="idempotency_conflict",
            details=[{"request_id": request_id}],
        )


class Gone(ApiError):
    """The result (or a download link) outlived its retention period."""

    status = 410
    default_code = "expired"
    default_message = "This resource has expired and is no longer available."


class PayloadTooLarge(ApiError):
    status = 413
    default_code = "payload_too_large"
    default_message = "The request or one of its inputs is too large."


class UnsupportedMediaType(ApiError):
    status = 415
    default_code = "unsupported_media_type"
    default_message = "The media type of the request or of an input is not supported."


class ValidationFailed(ApiError):
    status = 422
    default_code = "validation_error"
    default_message = "The request is not valid."


class TooManyRequests(ApiError):
    """429; ``retry_after`` (seconds) becomes the ``Retry-After`` header clients back off by."""

    status = 429
    default_code = "rate_limited"
    default_message = "Too many requests; retry later."

    def __init__(self, message: str | None = None, *, retry_after: int, code: str | None = None) -> None:
        super().__init__(message, code=code, headers={"Retry-After": str(_retry_seconds(retry_after))})


class ServiceUnavailable(ApiError):
    status = 503
    default_code = "unavailable"
    default_message = "The service is unavailable; retry later."

    def __init__(self, message: str | None = None, *, retry_after: int, code: str | None = None) -> None:
        super().__init__(message, code=code, headers={"Retry-After": str(_retry_seconds(retry_after))})


class NotReady(ServiceUnavailable):
    default_code = "not_ready"
    default_message = "The service is starting and not ready yet; retry later."


class Draining(ServiceUnavailable):
    default_code = "draining"
    default_message = "The service is shutting down and accepts no new requests; retry later."


class InternalError(ApiError):
    """500 with a generic message; the cause goes to the log, never to the client."""


def _retry_seconds(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"retry_after must be a non-negative whole number of seconds, got {value!r}")
    return value


# -- the lower layers' errors -------------------------------------------------------------------------------

RETRY_AFTER_QUEUE_FULL_SECONDS = 30


def api_error_from(error: Exception) -> ApiError:
    """The HTTP meaning of an error of auth, inputs, storage or the job store (they know nothing of HTTP)."""
    for error_type, convert in _CONVERSIONS:
        if isinstance(error, error_type):
            return convert(error)
    raise TypeError(f"no HTTP meaning for {type(error).__name__}")  # pragma: no cover - registered types only


def _input_detail(error: InputRejected) -> dict[str, Any]:
    return {"field": error.field, "message": error.reason, **error.detail}


_CONVERSIONS: list[tuple[type[Exception], Callable[[Any], ApiError]]] = [
    (AuthenticationFailed, lambda e: Unauthorized(e.message, token_sent=e.token_sent)),
    (InputTooLarge, lambda e: PayloadTooLarge(e.message, code=e.code, details=[_input_detail(e)])),
    (NotMedia, lambda e: UnsupportedMediaType(e.message, details=[_input_detail(e)])),
    (InputRejected, lambda e: ValidationFailed(e.message, code=e.code, details=[_input_detail(e)])),
    (DownloadLinkExpired, lambda e: Gone("This download link has expired.")),
    ((ObjectNotFound, DownloadLinkInvalid, DownloadsNotServed, InvalidStorageKey), lambda e: NotFound()),
    # The routes only look up ids in the format this API issues, so the id can be named safely.
    (JobNotFound, lambda e: NotFound(f"No request {e.request_id}.")),
    (JobGone, lambda e: Gone("This request has expired and its result was deleted.")),
    (IdempotencyConflict, lambda e: Conflict.idempotency_key_reused(e.request_id)),
    (CancelConflict, lambda e: Conflict.not_cancellable(e.record.request_id, e.record.status.value)),
    (
        QueueFull,
        lambda e: TooManyRequests(
            "The queue is full; retry later.", code="queue_full", retry_after=RETRY_AFTER_QUEUE_FULL_SECONDS
        ),
    ),
    (
        TenantQueueFull,
        lambda e: TooManyRequests(
            f"You have {e.cap} jobs queued, your limit; submit more once some have started.",
            code="tenant_queue_full",
            retry_after=RETRY_AFTER_QUEUE_FULL_SECONDS,
        ),
    ),
    (
        UploadQuotaExceeded,
        lambda e: PayloadTooLarge(
            f"This upload would pass your {e.quota_bytes} byte storage quota ({e.used_bytes} bytes in use "
            "until your earlier uploads expire).",
            code="upload_quota_exceeded",
        ),
    ),
    (AppDraining, lambda e: Draining(retry_after=e.retry_after)),
]


async def _handle_lower_layer(request: Request, exc: Exception) -> JSONResponse:
    return await _handle_api_error(request, api_error_from(exc))


# -- request validation --------------------------------------------------------------------------------------

_FRIENDLY_MESSAGES = {
    "extra_forbidden": "unknown field",
    "missing": "field required",
}
_PARAMETER_LOCATIONS = frozenset({"query", "path", "header", "cookie"})


def api_error_from_validation(errors: Sequence[Mapping[str, Any]]) -> ApiError:
    """FastAPI's validation errors → 400 (body is not JSON), 415 (body not sent as JSON) or 422 (per field).

    Field names are reported as the client spelled them (the aliases such as ``128_steps`` unless the client
    used the Python names); the offending input values are never echoed.
    """
    for error in errors:
        loc = tuple(error.get("loc", ()))
        kind = error.get("type", "")
        if kind == "json_invalid":
            reason = (error.get("ctx") or {}).get("error", "")
            position = loc[1] if len(loc) > 1 else None
            where = f" at position {position}" if isinstance(position, int) else ""
            return MalformedJson(f"The request body is not valid JSON{where}: {reason or 'decode error'}.")
        if loc == ("body",):
            if kind == "missing":
                return MalformedJson("The request body is empty; a JSON object is required.")
            if isinstance(error.get("input"), (bytes, bytearray)):
                return UnsupportedMediaType(
                    "The request body must be JSON, sent with 'Content-Type: application/json'."
                )
    details = [_validation_detail(error) for error in errors]
    first = details[0] if details else {"field": "body", "message": "invalid"}
    more = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
    return ValidationFailed(f"Invalid request: {first['field']}: {first['message']}{more}.", details=details)


def _validation_detail(error: Mapping[str, Any]) -> dict[str, Any]:
    loc = tuple(error.get("loc", ()))
    location, path = (loc[0], loc[1:]) if loc and loc[0] in {"body", *_PARAMETER_LOCATIONS} else ("body", loc)
    field = ".".join(str(part) for part in path) or "body"
    kind = str(error.get("type", "value_error"))
    message = _FRIENDLY_MESSAGES.get(kind) or _strip_value_error(str(error.get("msg", "invalid value")))
    if loc == ("body",):
        message = "the request body must be a JSON object"
    detail: dict[str, Any] = {"field": field, "message": message, "type": kind}
    if location != "body":
        detail["location"] = location
    return detail


def _strip_value_error(message: str) -> str:
    # pydantic prefixes messages of plain ValueErrors raised in validators; the client needs only the reason.
    prefix = "Value error, "
    return message[len(prefix) :] if message.startswith(prefix) else message


# -- handlers ------------------------------------------------------------------------------------------------

_STATUS_ERRORS: dict[int, type[ApiError]] = {
    400: BadRequest,
    404: NotFound,
    405: MethodNotAllowed,
    409: Conflict,
    410: Gone,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    422: ValidationFailed,
}


def api_error_from_http_exception(exc: StarletteHTTPException) -> ApiError:
    """Starlette's own errors (unknown route, wrong method, body limit ...) in the API's shape."""
    headers = dict(exc.headers or {})
    error_type = _STATUS_ERRORS.get(exc.status_code)
    if exc.status_code == 404:
        return NotFound("No such resource.", headers=headers)
    if exc.status_code == 405:
        return MethodNotAllowed(headers=headers)
    message = exc.detail if isinstance(exc.detail, str) and exc.detail else None
    if error_type is not None:
        return error_type(message, headers=headers)
    try:
        phrase = HTTPStatus(exc.status_code).phrase
    except ValueError:
        phrase = "error"
    error = ApiError(
        message or f"{phrase}.", code=re.sub(r"[^a-z0-9]+", "_", phrase.lower()).strip("_"), headers=headers
    )
    error.status = exc.status_code
    return error


async def _handle_api_error(request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, ApiError):  # pragma: no cover - registered for ApiError only
        return await _handle_unexpected(request, exc)
    if exc.status >= 500:
        logger.error("%s %s → %d %s", request.method, request.url.path, exc.status, exc.code)
    return exc.to_response()


async def handle_validation_error(request: Request, exc: Exception) -> JSONResponse:
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    return api_error_from_validation(errors).to_response()


async def _handle_http_exception(request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, StarletteHTTPException):  # pragma: no cover - registered for HTTPException only
        return await _handle_unexpected(request, exc)
    return api_error_from_http_exception(exc).to_response()


async def _handle_unexpected(request: Request, exc: Exception) -> JSONResponse:
    # The traceback goes to the log only; the client gets the generic 500.
    logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return InternalError().to_response()


def install_error_handlers(app: FastAPI) -> None:
    """Render every error of ``app`` in the API's JSON shape.

    Starlette still re-raises an unhandled exception after the 500 response is sent (so servers can log
    it); the client sees only the generic body either way.
    """
    app.add_exception_handler(ApiError, _handle_api_error)
    for error_type, _ in _CONVERSIONS:
        for each in error_type if isinstance(error_type, tuple) else (error_type,):
            app.add_exception_handler(each, _handle_lower_layer)
    app.add_exception_handler(RequestValidationError, handle_validation_error)
    app.add_exception_handler(StarletteHTTPException, _handle_http_exception)
    app.add_exception_handler(Exception, _handle_unexpected)


class BodySizeLimit:
    """ASGI middleware: request bodies over ``max_bytes`` get the API's 413, declared or streamed.

    Starlette's own limit answers a too large Content-Length with a plain-text 413 before any handler runs;
    this one refuses it with the JSON shape, and raises a 413 ``HTTPException`` from ``receive`` for bodies
    that grow too large while streaming (FastAPI turns any other exception there into a 400), which the
    installed handlers render the same way.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
            raise ValueError(f"max_bytes must be a non-negative integer, got {max_bytes!r}")
        self.app = app
        self.max_bytes = max_bytes

    def _message(self) -> str:
        return f"The request body is larger than the {self.max_bytes} byte limit."

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await PayloadTooLarge(self._message()).to_response()(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise StarletteHTTPException(413, detail=self._message())
            return message

        await self.app(scope, limited_receive, send)


_RESPONSE_DESCRIPTIONS = {
    400: "Malformed JSON body",
    401: "Missing, malformed or unknown bearer token",
    404: "Unknown request id (or one of another tenant)",
    409: "Conflict with the current state (e.g. cancelling a job that already finished)",
    410: "Expired: past the retention period",
    413: "Body or input too large",
    415: "Unsupported media type",
    422: "Validation error naming each offending field",
    429: "Queue full or rate limited (see Retry-After)",
    503: "Not ready or shutting down (see Retry-After)",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` for a route: the listed statuses, documented with the error body model."""
    unknown = [status for status in statuses if status not in _RESPONSE_DESCRIPTIONS]
    if unknown:
        raise ValueError(f"no documented error response for status {unknown}")
    return {
        status: {"model": ErrorBody, "description": _RESPONSE_DESCRIPTIONS[status]} for status in statuses
    }
