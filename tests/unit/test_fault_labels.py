"""The fault report tells the API's own error answers from the ones the HTTP front made up."""

from __future__ import annotations

import httpx
import pytest

from loadtest.faults import error_label


def _response(status: int, **kwargs) -> httpx.Response:
    return httpx.Response(status, request=httpx.Request("GET", "http://127.0.0.1/healthz"), **kwargs)


@pytest.mark.parametrize("status", [500, 503])
def test_api_error_envelope_counts_under_its_status(status: int) -> None:
    body = {"error": {"code": "redis_unavailable", "message": "try again", "details": []}}
    assert error_label(_response(status, json=body)) == str(status)


@pytest.mark.parametrize(
    ("status", "kwargs"),
    [
        (500, {"text": "Internal Server Error"}),
        (502, {"html": "<html><body><h1>502 Bad Gateway</h1></body></html>"}),
        (500, {"json": {"detail": "replica died"}}),
        (503, {"json": ["not", "an", "envelope"]}),
    ],
)
def test_other_server_errors_are_the_fronts(status: int, kwargs: dict) -> None:
    assert error_label(_response(status, **kwargs)) == f"front {status}"


def test_client_errors_count_under_their_status() -> None:
    assert error_label(_response(404, text="not found")) == "404"
