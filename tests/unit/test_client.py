"""``serve.client`` without a server: error answers become typed exceptions, requests become bodies."""

from __future__ import annotations

import httpx
import pytest

from serve.client import ImageToVideo, TwoSpeakers, VideoToVideo, local_files, request_body
from serve.client.errors import (
    ApiError,
    Conflict,
    Gone,
    InvalidRequest,
    NotFound,
    RetryLater,
    Unauthorized,
    raise_for,
)


def _answer(status: int, code: str = "x", headers: dict | None = None) -> httpx.Response:
    body = {"error": {"code": code, "message": "m", "details": [{"field": "video", "message": "bad"}]}}
    return httpx.Response(status, json=body, headers=headers)


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, InvalidRequest),
        (401, Unauthorized),
        (404, NotFound),
        (409, Conflict),
        (410, Gone),
        (413, InvalidRequest),
        (415, InvalidRequest),
        (422, InvalidRequest),
        (500, ApiError),
    ],
)
def test_error_answers_are_typed(status, kind) -> None:
    with pytest.raises(kind) as raised:
        raise_for(_answer(status, "invalid_video"))
    error = raised.value
    assert (error.status, error.code, error.fields) == (status, "invalid_video", {"video"})


@pytest.mark.parametrize("status", [429, 503])
def test_busy_answers_carry_retry_after(status) -> None:
    with pytest.raises(RetryLater) as raised:
        raise_for(_answer(status, "queue_full", {"Retry-After": "7"}))
    assert raised.value.retry_after == 7.0


def test_a_non_json_error_is_still_an_api_error() -> None:
    with pytest.raises(ApiError, match="502 unexpected_response"):
        raise_for(httpx.Response(502, text="<html>bad gateway</html>"))
    raise_for(httpx.Response(202, json={}))  # success: nothing raised


def test_bodies_use_the_wire_names_and_leave_defaults_out(tmp_path) -> None:
    seed = ImageToVideo(prompt="a man talks", image="Runcomfy_example_1278_1.png", audio="file_" + "0" * 32)
    assert request_body(seed, {}) == {
        "241_positive_prompt": "a man talks",
        "284_image": "Runcomfy_example_1278_1.png",
        "125_audio": "file_" + "0" * 32,
    }
    two = TwoSpeakers(image="https://x.test/p.png", left_audio="a", right_audio="b", order="left_right")
    assert request_body(two, {"left_audio": "file_1"})["left_audio"] == "file_1"
    portrait = tmp_path / "me.png"
    portrait.write_bytes(b"png")
    dub = VideoToVideo(video=str(tmp_path / "missing.mp4"), audio=str(portrait))
    assert local_files(dub) == {"audio": portrait}  # only files that exist are uploaded
