"""The fetcher against live HTTP and HTTPS servers on 127.0.0.1: caps, deadline, redirects, pinning, probing.

Names are resolved by stubs (``assets.example.test`` → 127.0.0.1), never by DNS, and a safety net refuses
any connection to an address outside 127.0.0.0/8 and ::1 (and any real DNS query) before it happens,
failing the test, so nothing here can reach beyond this machine even if the guard were broken.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import io
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest
from PIL import Image

from serve.api.errors import ApiError, api_error_from
from serve.inputs.errors import InputRejected
from serve.inputs.fetcher import Fetcher, FetchPolicy
from serve.inputs.probe import probe_image

trustme = pytest.importorskip("trustme")

HOST = "assets.example.test"
FIELD = "284_image"
LOOPBACK = ipaddress.ip_network("127.0.0.0/8")


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 6), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


PNG = _png()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # silence the default stderr log
        return

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if "Content-Length" not in (headers or {}) and "Transfer-Encoding" not in (headers or {}):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        server: LiveServer = self.server.live  # type: ignore[attr-defined]
        server.requests.append((self.path, self.headers.get("Host")))
        parts = urlsplit(self.path)
        query = {key: values[0] for key, values in parse_qs(parts.query).items()}
        # The fetcher hangs up on purpose (cap, deadline).
        with contextlib.suppress(BrokenPipeError, ConnectionResetError, ssl.SSLError):
            self._route(parts.path, query)

    def _route(self, path: str, query: dict[str, str]) -> None:
        if path == "/portrait.png":
            self._send(200, PNG, {"Content-Type": "image/png"})
        elif path == "/text-as-image.png":
            self._send(200, b"hello, I am not a picture\n", {"Content-Type": "image/png"})
        elif path == "/truncated.png":
            self._send(200, PNG[: len(PNG) // 2], {"Content-Type": "image/png"})
        elif path == "/host":
            self._send(200, (self.headers.get("Host") or "").encode())
        elif path == "/big-declared":
            self.send_response(200)
            self.send_header("Content-Length", "5000")
            self.end_headers()
            self.wfile.write(b"x" * 5000)
        elif path == "/big-undeclared":
            # Neither Content-Length nor chunked: the body runs until the connection closes.
            self.close_connection = True
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            for _ in range(50):
                self.wfile.write(b"x" * 100)
        elif path == "/big-chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for _ in range(50):
                self.wfile.write(b"64\r\n" + b"x" * 100 + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        elif path == "/exact":
            self._send(200, b"y" * 1000)
        elif path == "/slow":
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            for _ in range(100):
                self.wfile.write(b"z")
                self.wfile.flush()
                time.sleep(0.1)
        elif path == "/gzip":
            self._send(200, gzip.compress(b"x" * 100), {"Content-Encoding": "gzip"})
        elif path == "/bad-length":
            self._send(200, b"abc", {"Content-Length": "lots"})
        elif path == "/missing":
            self._send(404, b"not here")
        elif path.startswith("/chain/"):
            remaining = int(path.rsplit("/", 1)[1])
            if remaining == 0:
                self._send(200, PNG, {"Content-Type": "image/png"})
            else:
                self._send(302, b"", {"Location": f"/chain/{remaining - 1}"})
        elif path == "/redirect":
            self._send(int(query.get("status", "302")), b"", {"Location": query["to"]})
        elif path == "/redirect-without-location":
            self._send(302, b"")
        else:
            self._send(404, b"unknown test path")


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        return  # clients hanging up mid-response is what several tests do on purpose


class LiveServer:
    def __init__(self, ssl_context: ssl.SSLContext | None) -> None:
        self.requests: list[tuple[str, str | None]] = []
        self.httpd = QuietServer(("127.0.0.1", 0), Handler)
        self.httpd.live = self  # type: ignore[attr-defined]
        if ssl_context is not None:
            self.httpd.socket = ssl_context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> LiveServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[object]]:
    """Connections to loopback pass; anything else (or a DNS query for a name) is refused before any I/O."""
    violations: list[object] = []
    real_connect = socket.socket.connect
    real_getaddrinfo = socket.getaddrinfo

    def _is_loopback(host: object) -> bool:
        try:
            address = ipaddress.ip_address(str(host).split("%", 1)[0])
        except ValueError:
            return False
        return address in LOOPBACK or address == ipaddress.ip_address("::1")

    def guarded_connect(sock: socket.socket, address: object) -> None:
        if not (isinstance(address, tuple) and _is_loopback(address[0])):
            violations.append(address)
            raise ConnectionRefusedError(f"test safety net: connection to {address!r} refused")
        return real_connect(sock, address)

    def guarded_getaddrinfo(host: object, *args: object, **kwargs: object):
        if not _is_loopback(host):
            violations.append(host)
            raise socket.gaierror(socket.EAI_NONAME, "test safety net: no DNS")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)
    yield violations
    assert violations == [], f"something tried to leave the loopback interface: {violations!r}"


@pytest.fixture(scope="module")
def tls() -> tuple[ssl.SSLContext, ssl.SSLContext, list[str]]:
    """(server context with a cert for HOST, client context trusting its CA, SNI names the server saw)."""
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(HOST).configure_cert(server_context)
    sni_seen: list[str] = []
    server_context.sni_callback = lambda _sock, name, _ctx: sni_seen.append(name)  # type: ignore[assignment]
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    return server_context, client_context, sni_seen


@pytest.fixture
def http_server() -> Iterator[LiveServer]:
    with LiveServer(None) as server:
        yield server


@pytest.fixture
def https_server(tls) -> Iterator[LiveServer]:
    with LiveServer(tls[0]) as server:
        yield server


class Resolver:
    """Stub DNS: fixed answers, every call recorded; optionally a different answer after the first."""

    def __init__(self, answers: dict[str, list[str]], later: dict[str, list[str]] | None = None) -> None:
        self.answers = answers
        self.later = later or {}
        self.calls: list[str] = []

    def __call__(self, host: str, port: int) -> list[str]:
        first = host not in self.calls
        self.calls.append(host)
        table = self.answers if first or host not in self.later else self.later
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "unknown")
        return table[host]


def dev_fetcher(**policy: object) -> Fetcher:
    """http:// and loopback allowed (the development setting), names resolved by the stub."""
    return Fetcher(
        FetchPolicy(allow_http_and_private=True, **policy),  # type: ignore[arg-type]
        resolver=Resolver({HOST: ["127.0.0.1"]}),
    )


def tls_fetcher(tls, resolver: Resolver, **policy: object) -> Fetcher:
    """The production policy (https only, guard on), 127.0.0.1/32 exempt so the live server is reachable."""
    return Fetcher(
        FetchPolicy(allowed_networks=(ipaddress.ip_network("127.0.0.1/32"),), **policy),  # type: ignore[arg-type]
        resolver=resolver,
        ssl_context=tls[1],
    )


def fetch(fetcher: Fetcher, url: str, max_bytes: int = 1000):
    return asyncio.run(fetcher.fetch(url, field=FIELD, max_bytes=max_bytes))


def fetch_error(fetcher: Fetcher, url: str, max_bytes: int = 1000) -> ApiError:
    with pytest.raises(InputRejected) as caught:
        fetch(fetcher, url, max_bytes)
    error = api_error_from(caught.value)
    assert error.details[0]["field"] == FIELD
    return error


# -- plain HTTP with the development setting -----------------------------------------------------------------


def test_fetch_image_and_probe_it(http_server: LiveServer) -> None:
    fetched = fetch(dev_fetcher(), f"http://{HOST}:{http_server.port}/portrait.png", max_bytes=10_000)
    assert fetched.data == PNG
    assert fetched.filename == "portrait.png" and fetched.content_type == "image/png"
    probe = probe_image(fetched.data)
    assert (probe.width, probe.height) == (8, 6)
    assert http_server.requests == [("/portrait.png", f"{HOST}:{http_server.port}")]


def test_text_served_as_image_is_refused_by_the_probe(http_server: LiveServer) -> None:
    fetched = fetch(dev_fetcher(), f"http://{HOST}:{http_server.port}/text-as-image.png")
    assert fetched.content_type == "image/png"  # what the server claims is not what decides
    with pytest.raises(InputRejected) as caught:
        probe_image(fetched.data)
    error = api_error_from(caught.value)
    assert (error.status, error.code) == (415, "unsupported_media_type")
    assert error.details[0]["field"] == FIELD


def test_truncated_image_is_422(http_server: LiveServer) -> None:
    fetched = fetch(dev_fetcher(), f"http://{HOST}:{http_server.port}/truncated.png")
    with pytest.raises(InputRejected) as caught:
        probe_image(fetched.data)
    error = api_error_from(caught.value)
    assert (error.status, error.code) == (422, "invalid_image")


def test_declared_oversize_is_refused_before_reading(http_server: LiveServer) -> None:
    error = fetch_error(dev_fetcher(), f"http://127.0.0.1:{http_server.port}/big-declared", max_bytes=1000)
    assert (error.status, error.code) == (413, "input_too_large")
    assert error.details[0]["limit_bytes"] == 1000


@pytest.mark.parametrize("path", ["/big-undeclared", "/big-chunked"])
def test_undeclared_oversize_is_cut_off(http_server: LiveServer, path: str) -> None:
    error = fetch_error(dev_fetcher(), f"http://127.0.0.1:{http_server.port}{path}", max_bytes=1000)
    assert (error.status, error.code) == (413, "input_too_large")


def test_body_exactly_at_the_cap_passes(http_server: LiveServer) -> None:
    assert (
        len(fetch(dev_fetcher(), f"http://127.0.0.1:{http_server.port}/exact", max_bytes=1000).data) == 1000
    )


def test_slow_drip_hits_the_total_deadline(http_server: LiveServer) -> None:
    # Each byte arrives well within any per-read timeout; only a total deadline stops this.
    fetcher = dev_fetcher(timeout_seconds=1.0)
    started = time.monotonic()
    error = fetch_error(fetcher, f"http://127.0.0.1:{http_server.port}/slow")
    elapsed = time.monotonic() - started
    assert (error.status, error.code) == (422, "input_fetch_timeout")
    assert 0.9 <= elapsed < 3.0


def test_redirect_chain_within_the_cap(http_server: LiveServer) -> None:
    fetched = fetch(dev_fetcher(max_redirects=5), f"http://{HOST}:{http_server.port}/chain/5")
    assert fetched.data == PNG and fetched.url.endswith("/chain/0")
    assert len(http_server.requests) == 6


def test_redirect_chain_beyond_the_cap(http_server: LiveServer) -> None:
    error = fetch_error(dev_fetcher(max_redirects=5), f"http://{HOST}:{http_server.port}/chain/6")
    assert (error.status, error.code) == (422, "input_fetch_failed")
    assert "more than 5 redirects" in error.message
    assert len(http_server.requests) == 6


def test_no_redirects_allowed(http_server: LiveServer) -> None:
    error = fetch_error(dev_fetcher(max_redirects=0), f"http://{HOST}:{http_server.port}/chain/1")
    assert error.code == "input_fetch_failed"


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/missing", "input_fetch_failed"),
        ("/gzip", "input_fetch_failed"),
        ("/bad-length", "input_fetch_failed"),
        ("/redirect-without-location", "input_fetch_failed"),
    ],
)
def test_server_misbehaviour_is_422(http_server: LiveServer, path: str, code: str) -> None:
    error = fetch_error(dev_fetcher(), f"http://127.0.0.1:{http_server.port}{path}")
    assert (error.status, error.code) == (422, code)


def test_connection_refused_is_422() -> None:
    with socket.socket() as probe_socket:
        probe_socket.bind(("127.0.0.1", 0))
        port = probe_socket.getsockname()[1]
    error = fetch_error(dev_fetcher(), f"http://127.0.0.1:{port}/x")
    assert (error.status, error.code) == (422, "input_fetch_failed")


def test_http_is_refused_without_the_development_setting(http_server: LiveServer) -> None:
    fetcher = Fetcher(
        FetchPolicy(allowed_networks=(ipaddress.ip_network("127.0.0.1/32"),)), resolver=Resolver({})
    )
    error = fetch_error(fetcher, f"http://127.0.0.1:{http_server.port}/portrait.png")
    assert error.code == "input_fetch_blocked"
    assert http_server.requests == []


def test_name_resolving_to_loopback_is_refused_by_default(http_server: LiveServer, tls) -> None:
    resolver = Resolver({HOST: ["127.0.0.1"]})
    fetcher = Fetcher(FetchPolicy(), resolver=resolver, ssl_context=tls[1])
    error = fetch_error(fetcher, f"https://{HOST}:{http_server.port}/portrait.png")
    assert (error.status, error.code) == (422, "input_fetch_blocked")
    assert "loopback" in error.message
    assert resolver.calls == [HOST]
    assert http_server.requests == []


# -- HTTPS with the production policy (127.0.0.1/32 exempt) --------------------------------------------------


def test_https_pins_the_checked_address_and_sends_host_and_sni(https_server: LiveServer, tls) -> None:
    # DNS rebinding: the first answer passes the guard, every later answer would be the metadata service.
    resolver = Resolver({HOST: ["127.0.0.1"]}, later={HOST: ["169.254.169.254"]})
    fetched = fetch(tls_fetcher(tls, resolver), f"https://{HOST}:{https_server.port}/host")
    assert fetched.data == f"{HOST}:{https_server.port}".encode()
    assert resolver.calls == [HOST]  # resolved once; the connection used that answer
    assert HOST in tls[2]  # SNI carried the name although the socket went to 127.0.0.1


def test_https_certificate_must_match_the_name(https_server: LiveServer, tls) -> None:
    resolver = Resolver({"other.example.test": ["127.0.0.1"]})
    error = fetch_error(
        tls_fetcher(tls, resolver), f"https://other.example.test:{https_server.port}/portrait.png"
    )
    assert error.code == "input_fetch_failed" and "certificate" in error.message


def test_https_redirects_are_rechecked_hop_by_hop(https_server: LiveServer, tls) -> None:
    resolver = Resolver({HOST: ["127.0.0.1"]}, later={HOST: ["127.0.0.1"]})
    base = f"https://{HOST}:{https_server.port}"
    fetched = fetch(tls_fetcher(tls, resolver), f"{base}/chain/2")
    assert fetched.data == PNG
    assert resolver.calls == [HOST, HOST, HOST]


@pytest.mark.parametrize(
    "target",
    [
        "https://internal.example.test/secret",  # a name that resolves to a private address
        "https://169.254.169.254/latest/meta-data/",
        "https://[::ffff:10.0.0.7]/x",
        "https://167772161/x",  # 10.0.0.1 spelled as one decimal number
        "https://0xa9fea9fe/x",  # 169.254.169.254 in hex
        "https://localhost/x",
        "https://metadata.google.internal/computeMetadata/v1/",
        "file:///etc/passwd",
    ],
)
def test_redirect_from_allowed_host_to_private_target_is_refused(
    https_server: LiveServer, tls, target: str
) -> None:
    resolver = Resolver({HOST: ["127.0.0.1"], "internal.example.test": ["10.0.0.7"]})
    url = f"https://{HOST}:{https_server.port}/redirect?to={target}"
    error = fetch_error(tls_fetcher(tls, resolver), url)
    assert (error.status, error.code) == (422, "input_fetch_blocked")
    assert [path for path, _host in https_server.requests] == [f"/redirect?to={target}"]


def test_redirect_downgrade_to_http_is_refused(https_server: LiveServer, tls) -> None:
    resolver = Resolver({HOST: ["127.0.0.1"]})
    url = f"https://{HOST}:{https_server.port}/redirect?status=301&to=http://{HOST}:{https_server.port}/portrait.png"
    error = fetch_error(tls_fetcher(tls, resolver), url)
    assert error.code == "input_fetch_blocked" and "https://" in error.message


def test_https_slow_drip_hits_the_deadline(https_server: LiveServer, tls) -> None:
    resolver = Resolver({HOST: ["127.0.0.1"]})
    started = time.monotonic()
    error = fetch_error(
        tls_fetcher(tls, resolver, timeout_seconds=1.0), f"https://{HOST}:{https_server.port}/slow"
    )
    assert error.code == "input_fetch_timeout"
    assert time.monotonic() - started < 3.0
