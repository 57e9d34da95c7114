"""The fetcher's address guard: every private, local or special address is refused before any connection.

Name resolution is stubbed, and every way to open a connection or ask DNS (socket connect, create_connection,
getaddrinfo) is patched to record the attempt and raise before any I/O, so even a broken guard cannot send a
packet anywhere. Any recorded attempt fails the test at teardown (the two tests that provoke one on purpose
check and clear it).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterator

import httpx
import pytest

from serve.api.errors import ApiError, api_error_from
from serve.inputs.errors import InputRejected
from serve.inputs.fetcher import Fetcher, FetchPolicy, blocked_reason, parse_numeric_host

FIELD = "284_image"


@pytest.fixture(autouse=True)
def no_connections(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[object]]:
    attempts: list[object] = []

    def refuse(*args: object, **kwargs: object) -> None:
        attempts.append(args)
        # An OSError travels through httpx like a refused connection; the teardown below fails the test.
        raise ConnectionRefusedError(f"test safety net: no connection or DNS query allowed: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    yield attempts
    assert attempts == [], f"the guard let a connection or DNS query through: {attempts!r}"


class StubResolver:
    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.calls: list[str] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append(host)
        if host not in self.answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return self.answers[host]


def _fetch_error(
    url: str, resolver: StubResolver | None = None, policy: FetchPolicy | None = None
) -> ApiError:
    fetcher = Fetcher(policy or FetchPolicy(timeout_seconds=5), resolver=resolver or StubResolver({}))
    with pytest.raises(InputRejected) as caught:
        asyncio.run(fetcher.fetch(url, field=FIELD, max_bytes=1000))
    error = api_error_from(caught.value)
    assert error.details and error.details[0]["field"] == FIELD
    assert error.message.startswith(f"{FIELD}: ")
    return error


BLOCKED_ADDRESSES = [
    "10.0.0.1",
    "172.16.0.1",
    "192.168.1.1",
    "169.254.169.254",
    "100.64.0.1",
    "100.100.100.200",
    "0.0.0.0",
    "127.0.0.1",
    "127.255.255.254",
    "224.0.0.1",
    "255.255.255.255",
    "240.0.0.1",
    "198.18.0.1",
    "192.0.0.8",
    "192.0.2.1",
    "::",
    "::1",
    "fe80::1",
    "fc00::1",
    "fd00:ec2::254",
    "ff02::1",
    "fec0::1",
    "::ffff:127.0.0.1",
    "::ffff:10.0.0.1",
    "::ffff:169.254.169.254",
    "::127.0.0.1",
    "::8.8.8.8",
    "64:ff9b::a00:1",
    "64:ff9b::7f00:1",
    "64:ff9b:1::1",
    "2002:a00:1::",
    "2002:7f00:1::",
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",
    "2001:db8::1",
    "100::1",
]


@pytest.mark.parametrize("text", BLOCKED_ADDRESSES)
def test_blocked_addresses(text: str) -> None:
    address = ipaddress.ip_address(text)
    assert blocked_reason(address) is not None


@pytest.mark.parametrize(
    "text", ["8.8.8.8", "1.1.1.1", "2001:4860:4860::8888", "::ffff:8.8.8.8", "64:ff9b::808:808"]
)
def test_public_addresses_pass(text: str) -> None:
    assert blocked_reason(ipaddress.ip_address(text)) is None


def test_reasons_name_the_class_of_address() -> None:
    assert blocked_reason(ipaddress.ip_address("169.254.169.254")) == "a cloud metadata address"
    assert blocked_reason(ipaddress.ip_address("fd00:ec2::254")) == "a cloud metadata address"
    assert blocked_reason(ipaddress.ip_address("127.0.0.1")) == "a loopback address"
    assert "10.0.0.1" in (blocked_reason(ipaddress.ip_address("::ffff:10.0.0.1")) or "")
    assert blocked_reason(ipaddress.ip_address("fe80::1%eth0")) == "a scoped (link-local) address"


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0X7F000001", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("0177.0.0.01", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("127.0.1", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("10.0.0.1", "10.0.0.1"),
        ("167772161", "10.0.0.1"),
        ("0", "0.0.0.0"),
        ("8.8.8.8.", "8.8.8.8"),
        ("::1", "::1"),
    ],
)
def test_numeric_host_spellings_are_normalised(host: str, expected: str) -> None:
    assert parse_numeric_host(host) == ipaddress.ip_address(expected)


@pytest.mark.parametrize(
    "host", ["256.0.0.1", "1.2.3.4.5", "08.0.0.1", "4294967296", "1.2.3.0x100", "example.123"]
)
def test_malformed_numeric_hosts_raise(host: str) -> None:
    with pytest.raises(ValueError):
        parse_numeric_host(host)


@pytest.mark.parametrize("host", ["example.com", "1x.example.com", "cdn-1.example.org", "0x.example"])
def test_names_are_not_numeric(host: str) -> None:
    assert parse_numeric_host(host) is None


# -- the whole fetch path, with resolution stubbed and connections forbidden --------------------------------

LITERAL_URLS = [
    "https://10.0.0.1/a.png",
    "https://172.16.0.1/a.png",
    "https://192.168.1.1/a.png",
    "https://169.254.169.254/latest/meta-data/",
    "https://100.64.0.1/a.png",
    "https://0.0.0.0/a.png",
    "https://224.0.0.1/a.png",
    "https://[::1]/a.png",
    "https://[fe80::1]/a.png",
    "https://[fe80::1%25eth0]/a.png",
    "https://[fc00::1]/a.png",
    "https://[::ffff:127.0.0.1]/a.png",
    "https://[::ffff:10.0.0.1]/a.png",
    "https://[64:ff9b::a00:1]/a.png",
    "https://[2002:a00:1::]/a.png",
    "https://[fd00:ec2::254]/latest/meta-data/",
    "https://2130706433/a.png",
    "https://0x7f000001/a.png",
    "https://0177.0.0.1/a.png",
    "https://127.1:8443/a.png",
    "https://1.2.3.4.5/a.png",
]


@pytest.mark.parametrize("url", LITERAL_URLS)
def test_literal_addresses_are_blocked_without_resolution(url: str, no_connections: list[object]) -> None:
    resolver = StubResolver({})
    error = _fetch_error(url, resolver)
    assert (error.status, error.code) == (422, "input_fetch_blocked")
    assert resolver.calls == []
    assert no_connections == []


@pytest.mark.parametrize(
    "address",
    [
        "10.0.0.1",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "127.0.0.1",
        "::1",
        "fe80::1",
        "fc00::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "64:ff9b::a00:1",
        "2002:a00:1::",
    ],
)
def test_names_resolving_to_blocked_addresses(address: str, no_connections: list[object]) -> None:
    resolver = StubResolver({"images.example.com": [address]})
    error = _fetch_error("https://images.example.com/portrait.png", resolver)
    assert (error.status, error.code) == (422, "input_fetch_blocked")
    assert "images.example.com resolves to" in error.message
    assert resolver.calls == ["images.example.com"]
    assert no_connections == []


def test_one_private_answer_among_public_ones_blocks(no_connections: list[object]) -> None:
    resolver = StubResolver({"cdn.example.com": ["93.184.216.34", "2606:2800:220:1::1", "10.1.2.3"]})
    error = _fetch_error("https://cdn.example.com/a.png", resolver)
    assert error.code == "input_fetch_blocked"
    assert no_connections == []


@pytest.mark.parametrize(
    "host",
    [
        "localhost",
        "LOCALHOST",
        "localhost.",
        "app.localhost",
        "metadata.google.internal",
        "printer.local",
        "intranet",
    ],
)
def test_local_names_are_blocked_before_resolution(host: str, no_connections: list[object]) -> None:
    # Even if the guard skipped the name check, these answers would be refused.
    resolver = StubResolver(
        {host.lower().rstrip("."): ["127.0.0.1"], "metadata.google.internal": ["169.254.169.254"]}
    )
    error = _fetch_error(f"https://{host}/x", resolver)
    assert error.code == "input_fetch_blocked"
    assert resolver.calls == []
    assert no_connections == []


def test_metadata_name_is_blocked_by_address_too(no_connections: list[object]) -> None:
    resolver = StubResolver({"metadata.evil.example": ["169.254.169.254"]})
    error = _fetch_error("https://metadata.evil.example/computeMetadata/v1/", resolver)
    assert error.code == "input_fetch_blocked" and "metadata" in error.message
    assert no_connections == []


@pytest.mark.parametrize(
    "url",
    [
        "http://images.example.com/a.png",
        "ftp://images.example.com/a.png",
        "file:///etc/passwd",
        "gopher://images.example.com/",
        "https://user:pass@images.example.com/a.png",
        "https://images.example.com@10.0.0.1/a.png",
        "https:///a.png",
        "https://images.example.com:99999/a.png",
        "https://ima ges.example.com/a.png",
        "https://images.example.com/a.png\r\nHost: evil",
        "https://exa_mple..com/a.png",
    ],
)
def test_bad_urls_are_blocked(url: str, no_connections: list[object]) -> None:
    resolver = StubResolver({"images.example.com": ["93.184.216.34"]})
    error = _fetch_error(url, resolver)
    assert (error.status, error.code) == (422, "input_fetch_blocked")
    assert resolver.calls == []
    assert no_connections == []


def test_unresolvable_host_fails(no_connections: list[object]) -> None:
    error = _fetch_error("https://nowhere.example.com/a.png", StubResolver({}))
    assert (error.status, error.code) == (422, "input_fetch_failed")
    assert no_connections == []


def test_resolver_garbage_fails(no_connections: list[object]) -> None:
    error = _fetch_error("https://odd.example.com/a.png", StubResolver({"odd.example.com": ["not-an-ip"]}))
    assert error.code == "input_fetch_failed"
    error = _fetch_error("https://empty.example.com/a.png", StubResolver({"empty.example.com": []}))
    assert error.code == "input_fetch_failed"
    assert no_connections == []


def test_allowed_networks_exempt_only_themselves(no_connections: list[object]) -> None:
    policy = FetchPolicy(timeout_seconds=5, allowed_networks=(ipaddress.ip_network("10.20.0.0/16"),))
    resolver = StubResolver({"assets.corp.example": ["10.20.1.1"], "other.corp.example": ["10.21.1.1"]})
    error = _fetch_error("https://other.corp.example/a.png", resolver, policy)
    assert error.code == "input_fetch_blocked"
    assert no_connections == []
    # The exempt host passes the guard and reaches the (patched) connect, which proves it was let through.
    with pytest.raises(InputRejected) as caught:
        asyncio.run(
            Fetcher(policy, resolver=resolver).fetch(
                "https://assets.corp.example/a.png", field=FIELD, max_bytes=10
            )
        )
    assert api_error_from(caught.value).code == "input_fetch_failed"
    assert [call[-1] for call in no_connections] == [("10.20.1.1", 443)]  # type: ignore[index]
    no_connections.clear()


def test_default_policy_is_strict() -> None:
    policy = FetchPolicy()
    assert not policy.allow_http_and_private
    assert policy.allowed_networks == ()
    assert (policy.max_image_bytes, policy.max_audio_bytes) == (50 * 1024 * 1024, 100 * 1024 * 1024)
    assert policy.max_redirects == 5
    with pytest.raises(ValueError):
        FetchPolicy(max_image_bytes=0)
    with pytest.raises(ValueError):
        FetchPolicy(timeout_seconds=0)
    with pytest.raises(ValueError):
        FetchPolicy(max_redirects=-1)


def test_the_connection_guard_itself_catches_httpx(no_connections: list[object]) -> None:
    """Sanity check of this file's safety net: httpx's connect path goes through the patched socket."""

    async def attempt() -> None:
        async with httpx.AsyncClient(trust_env=False) as client:
            await client.get("https://10.255.255.1:9/")

    with pytest.raises(httpx.ConnectError):
        asyncio.run(attempt())
    assert [call[-1] for call in no_connections] == [("10.255.255.1", 9)]  # type: ignore[index]
    no_connections.clear()


def test_policy_from_app_config() -> None:
    from serve.config import FetchConfig

    policy = FetchPolicy.from_config(
        FetchConfig(max_image_bytes=10, max_audio_bytes=20, timeout_seconds=3, max_redirects=2)
    )
    assert (policy.max_image_bytes, policy.max_audio_bytes, policy.timeout_seconds) == (10, 20, 3)
    assert (policy.max_redirects, policy.allow_http_and_private) == (2, False)
    assert FetchPolicy.from_config(FetchConfig(allow_http_and_private=True)).allow_http_and_private
