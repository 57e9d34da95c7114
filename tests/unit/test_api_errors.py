"""Every error reaches the client in the one JSON shape, with the right status and never a traceback."""

from __future__ import annotations

import logging

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from serve.api.errors import (
    ApiError,
    BadRequest,
    BodySizeLimit,
    Conflict,
    Draining,
    Gone,
    InternalError,
    NotFound,
    NotReady,
    PayloadTooLarge,
    TooManyRequests,
    Unauthorized,
    UnsupportedMediaType,
    ValidationFailed,
    api_error_from,
    error_responses,
    install_error_handlers,
)
from serve.api.schemas import ErrorBody, SubmitRequest
from serve.auth import AuthenticationFailed
from serve.inputs.errors import InputRejected, InputTooLarge, NotMedia
from serve.jobs.errors import (
    AppDraining,
    IdempotencyConflict,
    JobGone,
    JobNotFound,
    QueueFull,
    TenantQueueFull,
    UploadQuotaExceeded,
)
from serve.storage.errors import DownloadLinkExpired, DownloadLinkInvalid, ObjectNotFound

SUBMIT = "/v1/models/community/infinite-talk/image-to-video"
VALID = {
    "241_positive_prompt": "a woman is talking",
    "284_image": "Runcomfy_example_1278_1.png",
    "125_audio": "Runcomfy_example_1278_1.mp3",
}

RAISED = {
    "conflict": Conflict.not_cancellable("req-1", "in_progress"),
    "gone": Gone(),
    "queue": TooManyRequests(code="queue_full", retry_after=7),
    "draining": Draining(retry_after=3),
    "not_ready": NotReady(retry_after=10),
    "unauthorized": Unauthorized(token_sent=True),
    "media": UnsupportedMediaType(),
    "too_large": PayloadTooLarge(code="input_too_large"),
}


def _app() -> FastAPI:
    app = FastAPI()
    app.add_middleware(BodySizeLimit, max_bytes=64 * 1024)
    install_error_handlers(app)

    @app.post(SUBMIT)
    async def submit(body: SubmitRequest) -> dict[str, int]:
        return {"steps": body.steps}

    @app.get("/raise/{name}")
    async def raise_named(name: str) -> None:
        raise RAISED[name]

    @app.get("/crash")
    async def crash() -> None:
        raise RuntimeError("secret internal detail /opt/weights/dit.safetensors")

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"item_id": item_id}

    return app


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(_app(), raise_server_exceptions=False)


def _error(response) -> dict:
    body = response.json()
    ErrorBody.model_validate(body)  # exactly the documented shape, nothing else
    return body["error"]


def test_valid_submit_passes(client: TestClient) -> None:
    response = client.post(SUBMIT, json={**VALID, "128_steps": 9})
    assert response.status_code == 200 and response.json() == {"steps": 9}


def test_validation_error_names_each_field_by_wire_name(client: TestClient) -> None:
    response = client.post(SUBMIT, json={**VALID, "128_steps": 50, "128_cfg": "high", "bogus": 1})
    assert response.status_code == 422
    error = _error(response)
    assert error["code"] == "validation_error"
    by_field = {detail["field"]: detail for detail in error["details"]}
    assert set(by_field) == {"128_steps", "128_cfg", "bogus"}
    assert by_field["128_steps"]["type"] == "less_than_equal" and "20" in by_field["128_steps"]["message"]
    assert by_field["128_cfg"]["type"] == "float_type"
    assert by_field["bogus"] == {"field": "bogus", "message": "unknown field", "type": "extra_forbidden"}
    assert "128_steps" in error["message"] and "(and 2 more)" in error["message"]
    assert "high" not in response.text  # inputs are never echoed


def test_missing_fields_and_non_object_body(client: TestClient) -> None:
    response = client.post(SUBMIT, json={"241_positive_prompt": "x"})
    assert response.status_code == 422
    assert {d["field"] for d in _error(response)["details"]} == {"284_image", "125_audio"}
    response = client.post(SUBMIT, json=[1, 2])
    assert response.status_code == 422
    assert _error(response)["details"][0]["field"] == "body"


def test_malformed_json_is_400(client: TestClient) -> None:
    response = client.post(
        SUBMIT, content=b'{"241_positive_prompt": ', headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    error = _error(response)
    assert error["code"] == "malformed_json" and "position" in error["message"]


def test_empty_json_body_is_400(client: TestClient) -> None:
    response = client.post(SUBMIT, content=b"", headers={"content-type": "application/json"})
    assert response.status_code == 400 and _error(response)["code"] == "malformed_json"


def test_body_not_sent_as_json_is_415(client: TestClient) -> None:
    response = client.post(SUBMIT, content=b'{"a": 1}', headers={"content-type": "text/plain"})
    assert response.status_code == 415 and _error(response)["code"] == "unsupported_media_type"


def test_path_parameter_errors_say_where(client: TestClient) -> None:
    response = client.get("/items/abc")
    assert response.status_code == 422
    assert _error(response)["details"][0] == {
        "field": "item_id",
        "message": "Input should be a valid integer, unable to parse string as an integer",
        "type": "int_parsing",
        "location": "path",
    }


def test_unknown_route_and_wrong_method(client: TestClient) -> None:
    response = client.get("/nope")
    assert response.status_code == 404 and _error(response)["code"] == "not_found"
    response = client.get(SUBMIT)
    assert response.status_code == 405 and _error(response)["code"] == "method_not_allowed"
    assert response.headers["allow"] == "POST"


def test_body_limit_is_413_when_declared(client: TestClient) -> None:
    response = client.post(SUBMIT, json={**VALID, "241_positive_prompt": "x" * 100_000})
    assert response.status_code == 413 and _error(response)["code"] == "payload_too_large"
    assert "65536" in _error(response)["message"]


def test_body_limit_is_413_when_streamed(client: TestClient) -> None:
    def chunks():
        yield b'{"241_positive_prompt": "'
        for _ in range(20):
            yield b"x" * 8192
        yield b'"}'

    response = client.post(SUBMIT, content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413 and _error(response)["code"] == "payload_too_large"


def test_body_limit_lets_small_bodies_through(client: TestClient) -> None:
    assert client.post(SUBMIT, json=VALID).status_code == 200
    with pytest.raises(ValueError):
        BodySizeLimit(_app(), max_bytes=-1)


@pytest.mark.parametrize(
    ("name", "status", "code", "header"),
    [
        ("conflict", 409, "not_cancellable", None),
        ("gone", 410, "expired", None),
        ("queue", 429, "queue_full", ("retry-after", "7")),
        ("draining", 503, "draining", ("retry-after", "3")),
        ("not_ready", 503, "not_ready", ("retry-after", "10")),
        (
            "unauthorized",
            401,
            "unauthorized",
            ("www-authenticate", 'Bearer realm="infinitetalk", error="invalid_token"'),
        ),
        ("media", 415, "unsupported_media_type", None),
        ("too_large", 413, "input_too_large", None),
    ],
)
def test_api_errors_render_with_status_code_and_headers(
    client: TestClient, name: str, status: int, code: str, header: tuple[str, str] | None
) -> None:
    response = client.get(f"/raise/{name}")
    assert response.status_code == status
    assert _error(response)["code"] == code
    if header is not None:
        assert response.headers[header[0]] == header[1]


def test_conflict_reports_current_state(client: TestClient) -> None:
    error = _error(client.get("/raise/conflict"))
    assert error["details"] == [{"request_id": "req-1", "status": "in_progress"}]
    assert "in_progress" in error["message"]


def test_unhandled_exception_is_generic_500_and_logged(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="serve.api.errors"):
        response = client.get("/crash")
    assert response.status_code == 500
    error = _error(response)
    assert error == {"code": "internal_error", "message": InternalError.default_message, "details": []}
    assert "secret" not in response.text and "Traceback" not in response.text
    assert any(
        "secret internal detail" in str(record.exc_info[1]) for record in caplog.records if record.exc_info
    )


def test_status_classes() -> None:
    assert [cls.status for cls in (BadRequest, Unauthorized, NotFound, Conflict, Gone)] == [
        400,
        401,
        404,
        409,
        410,
    ]
    assert [cls.status for cls in (PayloadTooLarge, UnsupportedMediaType, ValidationFailed)] == [
        413,
        415,
        422,
    ]
    assert (
        TooManyRequests(retry_after=1).status,
        NotReady(retry_after=1).status,
        InternalError().status,
    ) == (
        429,
        503,
        500,
    )
    assert Unauthorized().headers == {"WWW-Authenticate": 'Bearer realm="infinitetalk"'}
    with pytest.raises(ValueError):
        TooManyRequests(retry_after=-1)
    with pytest.raises(ValueError):
        NotReady(retry_after=True)  # type: ignore[arg-type]


def test_api_error_body_and_custom_code() -> None:
    error = ValidationFailed("bad", code="custom", details=[{"field": "x"}])
    assert isinstance(error, ApiError)
    assert error.to_body() == {"error": {"code": "custom", "message": "bad", "details": [{"field": "x"}]}}


def test_input_refusals_name_their_field_with_the_right_status() -> None:
    error = api_error_from(
        InputRejected("284_image", "unreadable image", code="invalid_image", type="invalid_image")
    )
    assert (error.status, error.code, error.message) == (422, "invalid_image", "284_image: unreadable image")
    assert error.details == [{"field": "284_image", "message": "unreadable image", "type": "invalid_image"}]
    too_large = api_error_from(InputTooLarge("125_audio", 1024))
    assert (too_large.status, too_large.code) == (413, "input_too_large")
    assert too_large.details[0]["limit_bytes"] == 1024
    not_media = api_error_from(NotMedia("125_audio", "no audio stream", code="unsupported_media_type"))
    assert (not_media.status, not_media.code) == (415, "unsupported_media_type")


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (AuthenticationFailed("Unknown or revoked token.", token_sent=True), 401, "unauthorized"),
        (ObjectNotFound("k"), 404, "not_found"),
        (DownloadLinkInvalid(), 404, "not_found"),
        (DownloadLinkExpired(), 410, "expired"),
        (JobNotFound("a" * 32), 404, "not_found"),
        (JobGone("a" * 32), 410, "expired"),
        (IdempotencyConflict("a" * 32), 409, "idempotency_conflict"),
        (QueueFull("full"), 429, "queue_full"),
        (TenantQueueFull(5), 429, "tenant_queue_full"),
        (UploadQuotaExceeded(100, 90), 413, "upload_quota_exceeded"),
        (AppDraining(30), 503, "draining"),
    ],
)
def test_every_lower_layer_error_has_its_http_meaning(error, status, code) -> None:
    converted = api_error_from(error)
    assert (converted.status, converted.code) == (status, code)
    if status in (429, 503):
        assert int(converted.headers["Retry-After"]) > 0


def test_error_responses_for_openapi() -> None:
    responses = error_responses(401, 404, 422)
    assert set(responses) == {401, 404, 422}
    assert responses[404]["model"] is ErrorBody
    with pytest.raises(ValueError):
        error_responses(418)


def test_openapi_document_builds(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    schema = document["components"]["schemas"]["SubmitRequest"]
    assert schema["title"] == "Input" and "241_positive_prompt" in schema["properties"]


def test_other_starlette_http_errors_keep_status_and_headers() -> None:
    from starlette.exceptions import HTTPException

    from serve.api.errors import api_error_from_http_exception

    error = api_error_from_http_exception(HTTPException(418, headers={"X-Why": "tea"}))
    assert (error.status, error.code, error.headers) == (418, "i_m_a_teapot", {"X-Why": "tea"})
    error = api_error_from_http_exception(HTTPException(413, detail="Content Too Large"))
    assert (error.status, error.code, error.message) == (413, "payload_too_large", "Content Too Large")
