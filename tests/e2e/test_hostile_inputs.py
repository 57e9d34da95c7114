"""Hostile inputs: every malformed, oversized, lying or malicious request gets its documented 4xx, never a
5xx, in the API's one error shape, creates no job, and the server still runs a normal job afterwards.

Two halves, because no test may send a packet outside 127.0.0.0/8 and ::1, even with a broken guard:

* **live** cases (against the running stack) use only loopback targets: every URL names 127.x or ::1 in
  some spelling (``2130706433``, ``0x7f000001``, ``[::ffff:127.0.0.1]``, ``localhost`` ...) at port 1, so
  even a guard that let one through would only be refused by the local kernel;
* private, link-local, metadata and NAT64/6to4 targets, names that resolve to them, and redirects into
  private space are probed **in-process** at the guard itself: ``Fetcher`` with name resolution stubbed and
  ``socket.connect``/``getaddrinfo`` patched to fail the test for anything but loopback. Redirect cases get
  their first hop from a local TLS server on 127.0.0.1 (a test CA; the policy exempts 127.0.0.0/8 so
  that server counts as "public") and must be refused before the second connection.
"""

from __future__ import annotations

import http.server
import ipaddress
import socket
import ssl
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import pytest
import trustme

from loadtest import hostile_media as media
from loadtest.client import MODEL_PATH, ApiClient, job_body
from loadtest.stack import BATTERY_MAX_AUDIO_BYTES as MAX_AUDIO_BYTES
from loadtest.stack import BATTERY_MAX_IMAGE_BYTES as MAX_IMAGE_BYTES
from loadtest.stack import TOKEN
from serve.api.errors import ApiError, api_error_from
from serve.client import InvalidRequest, NotFound
from serve.inputs.errors import InputRejected
from serve.inputs.fetcher import Fetcher, FetchPolicy

pytestmark = pytest.mark.e2e

BEARER = f"Bearer {TOKEN}"
JSON = {"Content-Type": "application/json"}
# The body limit of the e2e stack: an image and two speech data: URIs at the caps, base64-inflated, + 64 KiB.
BODY_LIMIT = (MAX_IMAGE_BYTES + 2 * MAX_AUDIO_BYTES) * 4 // 3 + 64 * 1024
SIG = "0" * 64
Body = dict[str, Any]


@dataclass(frozen=True)
class Hostile:
    """One hostile request and its documented answer (``code`` is the error body's machine code)."""

    id: str
    status: int
    code: str | None
    method: str = "POST"
    path: str = MODEL_PATH
    body: Body | Callable[[], Body] | None = None
    content: bytes | Callable[[], bytes] | None = None
    headers: dict[str, str] = field(default_factory=lambda: dict(JSON))
    authorization: str | None = BEARER

    def request(self) -> dict[str, Any]:
        headers = dict(self.headers)
        if self.authorization is not None:
            headers["Authorization"] = self.authorization
        kwargs: dict[str, Any] = {"method": self.method, "url": self.path, "headers": headers}
        if self.body is not None:
            kwargs["json"] = self.body() if callable(self.body) else self.body
        elif self.content is not None:
            kwargs["content"] = self.content() if callable(self.content) else self.content
        return kwargs


def body_with(**changes: Any) -> Body:
    """The cheapest valid body with fields replaced (by wire name; ``...`` removes a field)."""
    body = job_body()
    for name, value in changes.items():
        wire = _WIRE.get(name, name)
        if value is ...:
            body.pop(wire, None)
        else:
            body[wire] = value
    return body


_WIRE = {
    "prompt": "241_positive_prompt",
    "image": "284_image",
    "audio": "125_audio",
    "size": "245_valuex246_value",
    "frames": "270_value",
    "seed": "128_seed",
    "steps": "128_steps",
    "shift": "128_shift",
    "cfg": "128_cfg",
}


def field_case(case_id: str, status: int, code: str | None, **changes: Any) -> Hostile:
    return Hostile(case_id, status, code, body=body_with(**changes))


def media_case(case_id: str, status: int, code: str, name: str, make: Callable[[], str]) -> Hostile:
    """A body whose input ``name`` (image or audio) is built lazily (the media is generated on demand)."""
    return Hostile(case_id, status, code, body=lambda: body_with(**{name: make()}))


def url_case(case_id: str, url: str, code: str = "input_fetch_blocked", name: str = "image") -> Hostile:
    return Hostile(case_id, 422, code, body=body_with(**{name: url}))


def raw_case(
    case_id: str, status: int, code: str | None, content: bytes | Callable[[], bytes], **kw: Any
) -> Hostile:
    return Hostile(case_id, status, code, content=content, **kw)


def upload_case(
    case_id: str, status: int, code: str | None, content: bytes | Callable[[], bytes], **kw: Any
) -> Hostile:
    octets = {"Content-Type": "application/octet-stream"}
    return Hostile(case_id, status, code, path="/v1/files", content=content, headers=octets, **kw)


def get_case(case_id: str, path: str, status: int, code: str | None, **kw: Any) -> Hostile:
    return Hostile(case_id, status, code, method="GET", path=path, headers={}, **kw)


def _huge_stream() -> Iterator[bytes]:
    """A chunked body (no Content-Length) that grows past the limit: refused while streaming."""
    chunk = b"{" * 65536
    for _ in range(BODY_LIMIT // len(chunk) + 2):
        yield chunk


UNKNOWN_FILE = "file_" + "0123456789abcdef" * 2
# Percent-encoding takes three characters a byte: the most that fits a body and stays under the audio cap.
PERCENT_ENCODED_BYTES = min((BODY_LIMIT - 64 * 1024) // 3, MAX_AUDIO_BYTES - 1024)


def _percent_encoded_audio(size: int) -> str:
    """A ``data:`` URI with every byte percent-escaped: the slowest payload to decode that fits the body."""
    return "data:audio/mpeg," + "%49%44%33" + "%00" * (size - 3)


LOCAL_URLS = {
    "loopback": "https://127.0.0.1:1/portrait.png",
    "loopback-short-form": "https://127.1:1/portrait.png",
    "loopback-other-127": "https://127.254.3.4:1/portrait.png",
    "loopback-decimal": "https://2130706433:1/portrait.png",
    "loopback-hex": "https://0x7f000001:1/portrait.png",
    "loopback-octal": "https://0177.0.0.1:1/portrait.png",
    "loopback-mixed-radix": "https://0x7f.0.0.01:1/portrait.png",
    "loopback-trailing-dot": "https://127.0.0.1.:1/portrait.png",
    "ipv6-loopback": "https://[::1]:1/portrait.png",
    "ipv6-loopback-long": "https://[0:0:0:0:0:0:0:1]:1/portrait.png",
    "ipv6-mapped-loopback": "https://[::ffff:127.0.0.1]:1/portrait.png",
    "ipv6-mapped-loopback-hex": "https://[::ffff:7f00:1]:1/portrait.png",
    "ipv6-scoped-loopback": "https://[::1%25lo]:1/portrait.png",
    "unspecified-zero": "https://0:1/portrait.png",
    "unspecified-ipv6": "https://[::]:1/portrait.png",
    "localhost": "https://localhost:1/portrait.png",
    "localhost-upper-dot": "https://LOCALHOST.:1/portrait.png",
    "localhost-subdomain": "https://api.localhost:1/portrait.png",
    "single-label-name": "https://intranet:1/portrait.png",
    "dot-internal-name": "https://metadata.google.internal:1/computeMetadata/v1/",
    "credentials-in-url": "https://user:secret@127.0.0.1:1/portrait.png",
    "control-char-in-url": "https://127.0.0.1:1\t/portrait.png",
    "uppercase-scheme": "HTTPS://127.0.0.1:1/portrait.png",
}

CASES: list[Hostile] = [
    # -- malformed JSON and wrong content types -------------------------------------------------------------
    raw_case("json-truncated", 400, "malformed_json", b'{"241_positive_prompt": "hi"'),
    raw_case("json-not-json", 400, "malformed_json", b"hello world"),
    raw_case("json-empty-body", 400, "malformed_json", b""),
    raw_case("json-trailing-garbage", 400, "malformed_json", b'{"241_positive_prompt": "hi"} trailing'),
    raw_case("json-single-quotes", 400, "malformed_json", b"{'241_positive_prompt': 'hi'}"),
    raw_case("json-invalid-utf8", 400, None, b'{"241_positive_prompt": "\xff\xfe\xfd"}'),
    raw_case("json-deeply-nested", 400, None, b"[" * 100_000 + b"]" * 100_000),
    raw_case("json-array-body", 422, "validation_error", b"[]"),
    raw_case("json-null-body", 422, "validation_error", b"null"),
    raw_case("json-string-body", 422, "validation_error", b'"Runcomfy_example_1278_1.png"'),
    raw_case(
        "json-nan",
        422,
        "validation_error",
        b'{"241_positive_prompt": "hi", "284_image": "Runcomfy_example_1278_1.png", '
        b'"125_audio": "Runcomfy_example_1278_1.mp3", "128_cfg": NaN}',
    ),
    raw_case(
        "json-infinity-by-overflow",
        422,
        "validation_error",
        b'{"241_positive_prompt": "hi", "284_image": "Runcomfy_example_1278_1.png", '
        b'"125_audio": "Runcomfy_example_1278_1.mp3", "128_shift": 1e999}',
    ),
    raw_case(
        "content-type-text",
        415,
        "unsupported_media_type",
        b'{"a": 1}',
        headers={"Content-Type": "text/plain"},
    ),
    raw_case(
        "content-type-form",
        415,
        "unsupported_media_type",
        b"241_positive_prompt=hi",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    ),
    # -- wrong types ----------------------------------------------------------------------------------------
    field_case("type-steps-string", 422, "validation_error", steps="7"),
    field_case("type-steps-float", 422, "validation_error", steps=7.0),
    field_case("type-steps-bool", 422, "validation_error", steps=True),
    field_case("type-seed-string", 422, "validation_error", seed="96860978"),
    field_case("type-cfg-string", 422, "validation_error", cfg="1"),
    field_case("type-frames-float", 422, "validation_error", frames=125.0),
    field_case("type-frames-string", 422, "validation_error", frames="125"),
    field_case("type-prompt-number", 422, "validation_error", prompt=42),
    field_case("type-image-null", 422, "validation_error", image=None),
    field_case("type-audio-list", 422, "validation_error", audio=["Runcomfy_example_1278_1.mp3"]),
    field_case("type-size-number", 422, "validation_error", size=480),
    field_case("type-shift-object", 422, "validation_error", shift={"value": 11}),
    # -- enums and ranges -----------------------------------------------------------------------------------
    field_case("enum-size-no-aspect", 422, "validation_error", size="480x480"),
    field_case("enum-size-unknown", 422, "validation_error", size="481x481 (1:1)"),
    field_case("enum-size-case", 422, "validation_error", size="480X480 (1:1)"),
    field_case("enum-frames-126", 422, "validation_error", frames=126),
    field_case("enum-frames-zero", 422, "validation_error", frames=0),
    field_case("range-steps-5", 422, "validation_error", steps=5),
    field_case("range-steps-21", 422, "validation_error", steps=21),
    field_case("range-steps-negative", 422, "validation_error", steps=-1),
    field_case("range-shift-low", 422, "validation_error", shift=0.5),
    field_case("range-shift-high", 422, "validation_error", shift=15.01),
    field_case("range-cfg-low", 422, "validation_error", cfg=0.59),
    field_case("range-cfg-high", 422, "validation_error", cfg=2.01),
    field_case("range-audio-cfg-low", 422, "validation_error", audio_cfg=0.49),
    field_case("range-audio-cfg-high", 422, "validation_error", audio_cfg=10.01),
    field_case("type-audio-cfg-string", 422, "validation_error", audio_cfg="2"),
    field_case("type-match-audio-length-integer", 422, "validation_error", match_audio_length=1),
    field_case("type-match-audio-length-string", 422, "validation_error", match_audio_length="true"),
    Hostile(
        "match-audio-length-speech-shorter-than-a-frame",
        422,
        "invalid_audio",
        body=lambda: body_with(audio=media.data_uri(media.blip_wav(), "audio/wav"), match_audio_length=True),
    ),
    field_case("range-seed-2^64", 422, "validation_error", seed=2**64),
    field_case("range-seed-below-int64", 422, "validation_error", seed=-(2**63) - 1),
    field_case("range-seed-huge", 422, "validation_error", seed=10**40),
    # -- unknown and missing fields -------------------------------------------------------------------------
    field_case("unknown-field", 422, "validation_error", callback_url="https://127.0.0.1:1/hook"),
    field_case("unknown-near-miss-name", 422, "validation_error", **{"241_positive_prompt ": "hi"}),
    field_case("missing-image", 422, "validation_error", image=...),
    field_case("missing-audio", 422, "validation_error", audio=...),
    Hostile("missing-everything", 422, "validation_error", body={}),
    Hostile(
        "idempotency-key-too-long",
        422,
        "validation_error",
        body=body_with(),
        headers={**JSON, "Idempotency-Key": "k" * 201},
    ),
    # -- prompts --------------------------------------------------------------------------------------------
    field_case("prompt-empty", 422, "validation_error", prompt=""),
    field_case("prompt-whitespace", 422, "validation_error", prompt=" \t\n  "),
    field_case("prompt-2001-chars", 422, "validation_error", prompt="a" * 2001),
    field_case("prompt-one-megabyte", 422, "validation_error", prompt="ab" * 512 * 1024),
    field_case("image-reference-blank", 422, "validation_error", image="   "),
    # -- huge bodies and inputs -----------------------------------------------------------------------------
    raw_case("body-over-limit-declared", 413, "payload_too_large", b"{" * (BODY_LIMIT + 1)),
    raw_case("body-over-limit-streamed", 413, "payload_too_large", _huge_stream),
    media_case(
        "image-data-uri-over-cap",
        413,
        "input_too_large",
        "image",
        lambda: media.data_uri(b"\x89PNG\r\n\x1a\n" + b"\x00" * MAX_IMAGE_BYTES, "image/png"),
    ),
    media_case(
        "audio-data-uri-over-cap",
        413,
        "input_too_large",
        "audio",
        lambda: media.data_uri(b"ID3" + b"\x00" * MAX_AUDIO_BYTES, "audio/mpeg"),
    ),
    upload_case("upload-over-cap", 413, "payload_too_large", lambda: b"\x00" * (MAX_AUDIO_BYTES + 1)),
    media_case(
        "audio-percent-encoded-data-uri-at-body-limit",
        422,
        "invalid_audio",
        "audio",
        lambda: _percent_encoded_audio(PERCENT_ENCODED_BYTES),
    ),
    # -- tokens ---------------------------------------------------------------------------------------------
    Hostile("auth-missing", 401, "unauthorized", body=body_with(), authorization=None),
    Hostile("auth-basic-scheme", 401, "unauthorized", body=body_with(), authorization="Basic dXNlcjpwYXNz"),
    Hostile("auth-bearer-without-token", 401, "unauthorized", body=body_with(), authorization="Bearer"),
    Hostile("auth-wrong-token", 401, "unauthorized", body=body_with(), authorization="Bearer not-a-token"),
    Hostile("auth-token-and-junk", 401, "unauthorized", body=body_with(), authorization=f"{BEARER} extra"),
    Hostile("auth-token-prefix", 401, "unauthorized", body=body_with(), authorization=BEARER[:-1]),
    Hostile("auth-huge-token", 401, "unauthorized", body=body_with(), authorization="Bearer " + "t" * 8000),
    raw_case("auth-missing-malformed-json", 401, "unauthorized", b'{"prompt": ', authorization=None),
    raw_case("auth-wrong-malformed-json", 401, "unauthorized", b"{", authorization="Bearer not-a-token"),
    get_case(
        "auth-status-missing", f"/v1/requests/{'0' * 32}/status", 401, "unauthorized", authorization=None
    ),
    get_case(
        "auth-result-wrong", f"/v1/requests/{'0' * 32}/result", 401, "unauthorized", authorization="Bearer x"
    ),
    upload_case("auth-upload-missing", 401, "unauthorized", media.portrait_png, authorization=None),
    # -- loopback in every spelling, non-https schemes (live: loopback only, port 1) -----------------------
    *(url_case(f"ssrf-{name}", url) for name, url in LOCAL_URLS.items()),
    url_case("ssrf-audio-field-loopback", "https://127.0.0.1:1/speech.mp3", name="audio"),
    url_case("scheme-http", "http://127.0.0.1:1/portrait.png"),
    url_case("scheme-ftp", "ftp://127.0.0.1:1/portrait.png", "invalid_input_reference"),
    url_case("scheme-file", "file:///etc/passwd", "invalid_input_reference"),
    url_case("scheme-gopher", "gopher://127.0.0.1:1/_INFO", "invalid_input_reference"),
    url_case("scheme-javascript", "javascript:alert(1)", "invalid_input_reference"),
    url_case("scheme-relative", "//127.0.0.1:1/portrait.png", "invalid_input_reference"),
    # -- lying, truncated and hostile files -----------------------------------------------------------------
    media_case(
        "text-named-png",
        415,
        "unsupported_media_type",
        "image",
        lambda: media.data_uri(media.text_bytes(), "image/png"),
    ),
    media_case(
        "svg-as-image",
        415,
        "unsupported_media_type",
        "image",
        lambda: media.data_uri(media.svg_bytes(), "image/png"),
    ),
    media_case(
        "png-decompression-bomb",
        422,
        "invalid_image",
        "image",
        lambda: media.data_uri(media.png_bomb(), "image/png"),
    ),
    media_case(
        "png-truncated",
        422,
        "invalid_image",
        "image",
        lambda: media.data_uri(media.truncated_png(), "image/png"),
    ),
    media_case(
        "mp3-that-is-text",
        415,
        "unsupported_media_type",
        "audio",
        lambda: media.data_uri(media.text_bytes(), "audio/mpeg"),
    ),
    media_case(
        "png-as-audio",
        415,
        "unsupported_media_type",
        "audio",
        lambda: media.data_uri(media.portrait_png(), "audio/mpeg"),
    ),
    media_case(
        "audio-zero-length-data-uri", 422, "invalid_data_uri", "audio", lambda: "data:audio/wav;base64,"
    ),
    media_case(
        "audio-wav-no-samples",
        422,
        "invalid_audio",
        "audio",
        lambda: media.data_uri(media.empty_wav(), "audio/wav"),
    ),
    media_case(
        "audio-wav-header-claims-4gb",
        422,
        "invalid_audio",
        "audio",
        lambda: media.data_uri(media.wav_claiming_huge_size(), "audio/wav"),
    ),
    media_case(
        "audio-two-hours-wav",
        422,
        "invalid_audio",
        "audio",
        lambda: media.data_uri(media.hours_long_wav(), "audio/wav"),
    ),
    media_case(
        "audio-one-hour-flac",
        422,
        "invalid_audio",
        "audio",
        lambda: media.data_uri(media.hours_long_flac(), "audio/flac"),
    ),
    media_case("data-uri-no-comma", 422, "invalid_data_uri", "image", lambda: "data:image/png;base64"),
    media_case("data-uri-bad-base64", 422, "invalid_data_uri", "image", lambda: "data:image/png;base64,@@@="),
    upload_case("upload-empty", 422, "validation_error", b""),
    upload_case("upload-text", 415, "unsupported_media_type", media.text_bytes),
    upload_case("upload-png-bomb", 422, "invalid_image", media.png_bomb),
    # -- path traversal and ids -----------------------------------------------------------------------------
    field_case("file-id-traversal", 422, "invalid_input_reference", image="file_../../../etc/passwd"),
    field_case(
        "file-id-encoded-traversal", 422, "invalid_input_reference", image="file_..%2f..%2fetc%2fpasswd"
    ),
    field_case(
        "file-id-uppercase-hex",
        422,
        "invalid_input_reference",
        image=UNKNOWN_FILE.upper().replace("FILE", "file"),
    ),
    field_case("file-id-unknown", 422, "input_file_not_found", image=UNKNOWN_FILE),
    field_case("reference-relative-path", 422, "invalid_input_reference", image="../../../etc/passwd"),
    field_case("reference-absolute-path", 422, "invalid_input_reference", image="/etc/passwd"),
    field_case(
        "reference-example-of-other-kind", 422, "invalid_input_reference", image="Runcomfy_example_1278_1.mp3"
    ),
    get_case("request-id-traversal", "/v1/requests/%2e%2e%2f%2e%2e%2fetc%2fpasswd/status", 404, "not_found"),
    get_case("request-id-unknown", f"/v1/requests/{'f' * 32}/status", 404, "not_found"),
    Hostile("cancel-unknown-id", 404, "not_found", path=f"/v1/requests/{'f' * 32}/cancel", headers={}),
    get_case(
        "output-traversal",
        f"/v1/outputs/%2e%2e/%2e%2e/etc/passwd?expires=9999999999&sig={SIG}",
        404,
        "not_found",
    ),
    get_case(
        "output-forged-signature",
        f"/v1/outputs/local/{'f' * 32}/video.mp4?expires=9999999999&sig={SIG}",
        404,
        "not_found",
    ),
    get_case("output-no-signature", f"/v1/outputs/local/{'f' * 32}/video.mp4", 404, "not_found"),
    get_case("method-get-on-submit", MODEL_PATH, 405, "method_not_allowed"),
    Hostile(
        "method-delete-status",
        405,
        "method_not_allowed",
        method="DELETE",
        path=f"/v1/requests/{'f' * 32}/status",
    ),
]


def test_the_battery_is_big_enough() -> None:
    assert len(CASES) >= 50
    assert len({case.id for case in CASES}) == len(CASES), "case ids must be unique"


@pytest.fixture(scope="module")
def plain_http(stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.base_url, timeout=60.0) as client:
        yield client


@pytest.fixture(scope="module")
def jobs_before(api: ApiClient) -> float:
    """Jobs created so far: no hostile case may add one."""
    return api.metric("infinitetalk_jobs_submitted_total")


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_hostile_request_gets_its_documented_error(
    plain_http: httpx.Client, jobs_before: float, case: Hostile
) -> None:
    response = plain_http.request(**case.request())
    assert response.status_code < 500, f"server error {response.status_code}: {response.text[:300]}"
    assert response.status_code == case.status, f"{response.status_code}: {response.text[:300]}"
    body = response.json()
    assert set(body) == {"error"} and {"code", "message", "details"} <= set(body["error"]), body
    if case.code is not None:
        assert body["error"]["code"] == case.code, body
    assert "Traceback" not in response.text and 'File "/' not in response.text
    if case.status == 401:
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


# -- the guard, in-process: private, link-local and metadata targets never reach connect() -------------------


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return host in ("localhost",)


@pytest.fixture()
def egress_blocked(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """A connection or name lookup beyond loopback fails the test (and is recorded, in case it is caught)."""
    attempts: list[Any] = []
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo

    def check(address: Any) -> None:
        host = address[0] if isinstance(address, tuple) else str(address)
        if not _is_loopback(str(host)):
            attempts.append(address)
            pytest.fail(f"the test tried to connect to {address}")

    def connect(self: socket.socket, address: Any) -> None:
        check(address)
        return real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        check(address)
        return real_connect_ex(self, address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        text = host.decode() if isinstance(host, bytes) else str(host)
        try:
            ipaddress.ip_address(text.split("%")[0])  # a literal: no lookup leaves the machine
        except ValueError:
            if not _is_loopback(text):
                attempts.append(text)
                pytest.fail(f"the test tried to resolve {text}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield attempts
    assert not attempts, f"connections beyond loopback were attempted: {attempts}"


STUB_DNS = {
    "private.example": ["10.0.0.7"],
    "metadata.example": ["169.254.169.254"],
    "mixed.example": ["93.184.216.34", "10.0.0.1"],
    "ula.example": ["fd12:3456::1"],
    "linklocal6.example": ["fe80::1"],
    "mapped-private.example": ["::ffff:192.168.1.1"],
    "loopback.example": ["127.0.0.1"],
    "loopback6.example": ["::1"],
    "cgnat.example": ["100.64.0.1"],
    "assets.test": ["127.0.0.1"],
}


def stub_resolver(host: str, port: int) -> list[str]:
    if host not in STUB_DNS:
        pytest.fail(f"unexpected lookup of {host}")
    return STUB_DNS[host]


PRIVATE_TARGETS = {
    "rfc1918-10": "https://10.0.0.1/x.png",
    "rfc1918-172": "https://172.16.5.4/x.png",
    "rfc1918-192": "https://192.168.1.1/x.png",
    "cgnat": "https://100.64.0.1/x.png",
    "link-local": "https://169.254.1.1/x.png",
    "metadata-aws-gcp-azure": "https://169.254.169.254/latest/meta-data/",
    "metadata-ecs": "https://169.254.170.2/v2/credentials",
    "metadata-alibaba": "https://100.100.100.200/latest/meta-data/",
    "metadata-aws-ipv6": "https://[fd00:ec2::254]/latest/meta-data/",
    "multicast": "https://224.0.0.1/x.png",
    "broadcast": "https://255.255.255.255/x.png",
    "benchmarking": "https://198.18.0.1/x.png",
    "reserved-240": "https://240.0.0.1/x.png",
    "this-network": "https://0.1.2.3/x.png",
    "ipv6-link-local": "https://[fe80::1]/x.png",
    "ipv6-unique-local": "https://[fc00::1]/x.png",
    "ipv6-multicast": "https://[ff02::1]/x.png",
    "ipv6-site-local": "https://[fec0::1]/x.png",
    "ipv6-mapped-private": "https://[::ffff:10.0.0.1]/x.png",
    "ipv6-mapped-metadata": "https://[::ffff:169.254.169.254]/latest/meta-data/",
    "ipv6-compatible": "https://[::10.0.0.1]/x.png",
    "nat64-metadata": "https://[64:ff9b::a9fe:a9fe]/latest/meta-data/",
    "6to4-metadata": "https://[2002:a9fe:a9fe::1]/latest/meta-data/",
    "teredo": "https://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/x.png",
    "decimal-private": "https://167772161/x.png",
    "decimal-metadata": "https://2852039166/latest/meta-data/",
    "hex-metadata": "https://0xa9fea9fe/latest/meta-data/",
    "octal-metadata": "https://0251.0376.0251.0376/latest/meta-data/",
    "short-form-private": "https://10.1/x.png",
    "name-private": "https://private.example/x.png",
    "name-metadata": "https://metadata.example/latest/meta-data/",
    "name-mixed-answers": "https://mixed.example/x.png",
    "name-ipv6-unique-local": "https://ula.example/x.png",
    "name-ipv6-link-local": "https://linklocal6.example/x.png",
    "name-mapped-private": "https://mapped-private.example/x.png",
    "name-loopback": "https://loopback.example/x.png",
    "name-ipv6-loopback": "https://loopback6.example/x.png",
    "name-cgnat": "https://cgnat.example/x.png",
    "name-gcp-metadata": "https://metadata.google.internal/computeMetadata/v1/",
}


def _fetch(fetcher: Fetcher, url: str, max_bytes: int = MAX_IMAGE_BYTES) -> Any:
    async def go() -> Any:
        return await fetcher.fetch(url, field="284_image", max_bytes=max_bytes)

    return anyio.run(go)


def _refusal(fetcher: Fetcher, url: str) -> ApiError:
    """How the API answers the fetcher's refusal of ``url`` (``InputRejected``: the fetcher knows no HTTP)."""
    with pytest.raises(InputRejected) as raised:
        _fetch(fetcher, url)
    assert raised.value.field == "284_image", raised.value.message
    return api_error_from(raised.value)


@pytest.mark.parametrize("url", PRIVATE_TARGETS.values(), ids=PRIVATE_TARGETS.keys())
def test_guard_refuses_private_targets_before_connecting(egress_blocked: list[Any], url: str) -> None:
    fetcher = Fetcher(FetchPolicy(), resolver=stub_resolver)
    refusal = _refusal(fetcher, url)
    assert (refusal.status, refusal.code) == (422, "input_fetch_blocked"), refusal.message
    assert refusal.details[0]["field"] == "284_image"


# -- redirects, sizes and time, in-process against a local TLS server ----------------------------------------

REDIRECTS = {
    "/to-private": "https://10.0.0.1/secret.png",
    "/to-metadata": "https://169.254.169.254/latest/meta-data/iam/security-credentials/",
    "/to-mapped-metadata": "https://[::ffff:a9fe:a9fe]/latest/meta-data/",
    "/to-private-name": "https://private.example/secret.png",
    "/to-decimal-private": "https://3232235777/secret.png",
    "/to-http": "http://assets.test/portrait.png",
    "/to-file": "file:///etc/passwd",
    "/loop": "/loop",
}


class _AssetHandler(http.server.BaseHTTPRequestHandler):
    seen: list[str]

    def log_message(self, *args: Any) -> None:  # keep the test output clean
        pass

    def do_GET(self) -> None:
        self.seen.append(self.path)
        if self.path in REDIRECTS:
            self.send_response(302)
            self.send_header("Location", REDIRECTS[self.path])
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/portrait.png":
            data = media.portrait_png()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        elif self.path == "/declared-too-big":
            self.send_response(200)
            self.send_header("Content-Length", str(MAX_IMAGE_BYTES + 1))
            self.end_headers()
        elif self.path == "/streams-too-big":
            self.send_response(200)
            self.end_headers()  # no length: the fetcher must count the bytes itself
            for _ in range(MAX_IMAGE_BYTES // 65536 + 2):
                self.wfile.write(b"\x00" * 65536)
        elif self.path == "/slow-drip":
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            for _ in range(20):
                self.wfile.write(b"\x00")
                self.wfile.flush()
                time.sleep(0.25)
        else:
            self.send_error(404)


@pytest.fixture(scope="module")
def asset_server() -> Iterator[tuple[str, ssl.SSLContext, list[str]]]:
    """An HTTPS server at https://assets.test:<port>/ (127.0.0.1), trusted through a test CA."""
    ca = trustme.CA()
    certificate = ca.issue_cert("assets.test", "127.0.0.1")
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    certificate.configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    seen: list[str] = []
    handler = type("Handler", (_AssetHandler,), {"seen": seen})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    server.socket = server_context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://assets.test:{server.server_address[1]}", client_context, seen
    finally:
        server.shutdown()
        server.server_close()


def _local_fetcher(client_context: ssl.SSLContext, **policy: Any) -> Fetcher:
    # 127.0.0.0/8 plays the public internet: the asset server is reachable, everything private is not.
    allowed = (ipaddress.ip_network("127.0.0.0/8"),)
    return Fetcher(
        FetchPolicy(allowed_networks=allowed, **policy), resolver=stub_resolver, ssl_context=client_context
    )


def test_harness_fetches_from_the_local_asset_server(egress_blocked: list[Any], asset_server) -> None:
    base, context, _ = asset_server
    fetched = _fetch(_local_fetcher(context), f"{base}/portrait.png")
    assert fetched.data == media.portrait_png()


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/to-private", "input_fetch_blocked"),
        ("/to-metadata", "input_fetch_blocked"),
        ("/to-mapped-metadata", "input_fetch_blocked"),
        ("/to-private-name", "input_fetch_blocked"),
        ("/to-decimal-private", "input_fetch_blocked"),
        ("/to-http", "input_fetch_blocked"),
        ("/to-file", "input_fetch_blocked"),
        ("/loop", "input_fetch_failed"),
    ],
)
def test_guard_rechecks_every_redirect(egress_blocked: list[Any], asset_server, path: str, code: str) -> None:
    base, context, seen = asset_server
    seen.clear()
    fetcher = _local_fetcher(context, max_redirects=3)
    refusal = _refusal(fetcher, f"{base}{path}")
    assert (refusal.status, refusal.code) == (422, code), refusal.message
    expected_hops = 4 if path == "/loop" else 1  # the loop is followed max_redirects times, then refused
    assert seen == [path] * expected_hops


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/declared-too-big", 413, "input_too_large"),
        ("/streams-too-big", 413, "input_too_large"),
        ("/slow-drip", 422, "input_fetch_timeout"),
    ],
)
def test_guard_caps_size_and_time(
    egress_blocked: list[Any], asset_server, path: str, status: int, code: str
) -> None:
    base, context, _ = asset_server
    fetcher = _local_fetcher(context, timeout_seconds=1.5, connect_timeout_seconds=1.0)
    started = time.monotonic()
    refusal = _refusal(fetcher, f"{base}{path}")
    assert (refusal.status, refusal.code) == (status, code), refusal.message
    assert time.monotonic() - started < 5.0


# -- afterwards: no job was created, other tenants see nothing, and a normal job still runs ------------------


def test_no_hostile_request_created_a_job(api: ApiClient, jobs_before: float) -> None:
    assert api.metric("infinitetalk_jobs_submitted_total") == jobs_before


LARGE_BODY_CASES = (
    "body-over-limit-declared",
    "body-over-limit-streamed",
    "image-data-uri-over-cap",
    "audio-data-uri-over-cap",
    "upload-over-cap",
    "audio-percent-encoded-data-uri-at-body-limit",
    "prompt-one-megabyte",
)
LARGE_BODY_ROUNDS = 10  # about 7 s of sending on an idle 2-core machine: 150+ polls
LARGE_BODY_SENDERS = 2
POLL_INTERVAL_S = 0.01
# The issue's bound for status polls while large bodies arrive; measured p99 is reported by the test.
POLL_P99_LIMIT_S = 1.0


def test_status_polls_keep_answering_while_large_bodies_arrive(stack, api: ApiClient) -> None:
    """Large hostile bodies (at and over every size limit, the slowest data: URI to decode) sent two at a
    time while a client polls a job's status: every poll answers, p99 under a second."""
    request_id = api.submit_accepted(job_body())
    api.cancel(request_id)
    cases = [case for case in CASES if case.id in LARGE_BODY_CASES] * LARGE_BODY_ROUNDS
    assert len(cases) == len(LARGE_BODY_CASES) * LARGE_BODY_ROUNDS

    latencies: list[float] = []
    poll_failures: list[str] = []
    sending = threading.Event()
    sending.set()

    def poll() -> None:
        with httpx.Client(base_url=stack.base_url, headers={"Authorization": BEARER}, timeout=30.0) as client:
            while sending.is_set():
                started = time.perf_counter()
                response = client.get(f"/v1/requests/{request_id}/status")
                latencies.append(time.perf_counter() - started)
                if response.status_code != 200:
                    poll_failures.append(f"{response.status_code}: {response.text[:200]}")
                time.sleep(POLL_INTERVAL_S)

    def send(case: Hostile) -> tuple[int, float]:
        request = case.request()
        with httpx.Client(base_url=stack.base_url, timeout=120.0) as client:
            started = time.perf_counter()
            response = client.request(**request)
            return response.status_code, time.perf_counter() - started

    poller = threading.Thread(target=poll, name="status-poller")
    poller.start()
    sent_at = time.perf_counter()
    try:
        with ThreadPoolExecutor(max_workers=LARGE_BODY_SENDERS) as senders:
            answers = list(senders.map(send, cases))
    finally:
        sending.clear()
        poller.join(timeout=60.0)
    sending_s = time.perf_counter() - sent_at

    assert [status for status, _ in answers] == [case.status for case in cases]
    assert not poll_failures, poll_failures[:5]
    p50, p99 = (statistics.quantiles(latencies, n=100, method="inclusive")[i] for i in (49, 98))
    slowest: dict[str, float] = {}
    for case, (_, seconds) in zip(cases, answers, strict=True):
        slowest[case.id] = max(slowest.get(case.id, 0.0), round(seconds, 2))
    print(
        f"\n{len(cases)} large bodies in {sending_s:.1f}s ({slowest}); {len(latencies)} status polls: "
        f"p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms"
    )
    assert len(latencies) >= 100, "too few polls to speak of a p99"
    assert p99 < POLL_P99_LIMIT_S


def test_server_still_serves_a_normal_job(idle_stack, api: ApiClient, other_api: ApiClient) -> None:
    upload = api.http.post("/v1/files", content=media.portrait_png())
    assert upload.status_code == 201, upload.text
    file_id = upload.json()["file_id"]
    request_id = api.submit_accepted(job_body(image=file_id))

    # Another tenant learns nothing: not the job, not its result, not the uploaded file.
    for call in (other_api.status, other_api.result, other_api.cancel):
        with pytest.raises(NotFound):
            call(request_id)
    with pytest.raises(InvalidRequest) as borrowed:
        other_api.submit_accepted(job_body(image=file_id))
    assert (borrowed.value.status, borrowed.value.code) == (422, "input_file_not_found")

    outcome = api.wait_until(request_id, {"completed", "failed", "cancelled"}, timeout=240)
    assert outcome.status == "completed", outcome
    result = api.result(request_id)
    assert result.output is not None, result
    video = api.http.get(result.output.video)
    assert video.status_code == 200 and video.content[4:8] == b"ftyp"
    with pytest.raises(NotFound):
        other_api.result(request_id)
    tampered = result.output.video.replace("sig=", "sig=0")
    assert api.http.get(tampered).status_code == 404
