"""A fetcher for client-supplied URLs that cannot be turned against the server's own network (SSRF).

Each hop: parse the URL (https only), refuse local names (``localhost``, ``*.internal`` ...) and numeric hosts
in any spelling (``2130706433``, ``0x7f000001``, ``0177.0.0.1`` are normalised to the address they mean),
resolve the name once, refuse the hop unless *every* address is public, then connect to the checked address
itself while sending the original name as ``Host`` and TLS SNI, so a second DNS answer (rebinding) can never
change where the bytes come from. Redirects are followed by hand, each target checked the same way, at most
``max_redirects`` of them. The body streams against a byte cap (a too large Content-Length is refused before
reading) and the whole fetch, redirects included, runs under one deadline, so a slow-drip server cannot hold
a request open by sending a byte now and then.

Status codes of the errors: blocked targets, unreachable or failing servers and timeouts are 422 (the
client's input is unusable; 408 would blame the client's own connection and 504 the server); a too large
input is 413. Every error names the request field.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import unquote, urljoin, urlsplit

import anyio
import httpx
import idna

from serve.inputs.errors import InputRejected, InputTooLarge

if TYPE_CHECKING:
    from serve.config import FetchConfig

logger = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# host, port → the addresses it resolves to (strings as getaddrinfo gives them). Injectable for tests.
Resolver = Callable[[str, int], Sequence[str]]

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_DEFAULT_PORTS = {"https": 443, "http": 80}
# Hosts that name the machine itself or a private network by convention (RFC 6761 .localhost, mDNS .local,
# ICANN's private-use .internal which carries GCP's metadata.google.internal, RFC 8375 home.arpa).
_LOCAL_NAME_SUFFIXES = ("localhost", "localdomain", "local", "internal", "home.arpa", "lan", "intranet")
_METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(address)
    for address in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack ...
        "169.254.170.2",  # AWS ECS task metadata
        "100.100.100.200",  # Alibaba Cloud
        "fd00:ec2::254",  # AWS over IPv6
    )
)
# Ranges the ``is_*`` properties do not all cover on every supported Python version.
_EXTRA_BLOCKED_NETWORKS = tuple(
    ipaddress.ip_network(network)
    for network in (
        "0.0.0.0/8",  # "this network"
        "100.64.0.0/10",  # carrier-grade NAT shared space
        "192.0.0.0/24",  # IETF protocol assignments
        "198.18.0.0/15",  # benchmarking
        "240.0.0.0/4",  # reserved, and the broadcast address
        "64:ff9b:1::/48",  # local-use NAT64
        "2001::/32",  # Teredo: the tunnelled IPv4 endpoint is not checkable
        "fec0::/10",  # deprecated site-local
        "100::/64",  # discard-only
    )
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_DIGITS = re.compile(r"^[0-9]{1,20}\Z")
_NUMERIC_PART = re.compile(r"^(0[xX][0-9a-fA-F]*|[0-9]+)\Z")
_HOST_LABEL = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?\Z")


@dataclass(frozen=True)
class FetchPolicy:
    """What the fetcher may do. The defaults are the production ones.

    ``allow_http_and_private`` is for development only: it allows ``http://`` and every address. Narrower,
    ``allowed_networks`` exempts specific networks from the address check (an internal asset server that is
    known to be safe to read from); https is still required.
    """

    max_image_bytes: int = 50 * 1024 * 1024
    max_audio_bytes: int = 100 * 1024 * 1024
    max_video_bytes: int = 100 * 1024 * 1024
    timeout_seconds: float = 30.0
    connect_timeout_seconds: float = 10.0
    max_redirects: int = 5
    allow_http_and_private: bool = False
    allowed_networks: tuple[IPNetwork, ...] = ()
    # http:// is accepted for hosts whose every address lies in one of these (the loopback, for a developer's
    # own webhook receiver); they are exempt from the address check like ``allowed_networks``.
    http_networks: tuple[IPNetwork, ...] = ()
    user_agent: str = "infinitetalk-serve input fetcher"

    def __post_init__(self) -> None:
        for name in ("max_image_bytes", "max_audio_bytes", "max_video_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not self.timeout_seconds > 0 or not self.connect_timeout_seconds > 0:
            raise ValueError("timeouts must be positive")
        if (
            isinstance(self.max_redirects, bool)
            or not isinstance(self.max_redirects, int)
            or self.max_redirects < 0
        ):
            raise ValueError(f"max_redirects must be a non-negative integer, got {self.max_redirects!r}")
        for name in ("allowed_networks", "http_networks"):
            networks = tuple(ipaddress.ip_network(n, strict=True) for n in getattr(self, name))
            object.__setattr__(self, name, networks)

    @classmethod
    def from_config(cls, config: FetchConfig) -> FetchPolicy:
        return cls(
            max_image_bytes=config.max_image_bytes,
            max_audio_bytes=config.max_audio_bytes,
            max_video_bytes=config.max_video_bytes,
            timeout_seconds=config.timeout_seconds,
            max_redirects=config.max_redirects,
            allow_http_and_private=config.allow_http_and_private,
        )


@dataclass(frozen=True)
class FetchedInput:
    data: bytes
    url: str  # after redirects
    filename: str  # last path segment of ``url`` (for messages and logs), or "download"
    content_type: str | None  # as claimed by the server: informational only, never trusted


# -- errors --------------------------------------------------------------------------------------------------


def _blocked(field: str, message: str) -> InputRejected:
    return InputRejected(field, message, code="input_fetch_blocked")


def _failed(field: str, message: str) -> InputRejected:
    return InputRejected(field, message, code="input_fetch_failed")


def _timeout(field: str, seconds: float) -> InputRejected:
    return InputRejected(
        field, f"the download did not finish within {seconds:g} s", code="input_fetch_timeout"
    )


# -- the address guard ---------------------------------------------------------------------------------------


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, 6to4, well-known NAT64), if any."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def blocked_reason(address: IPAddress) -> str | None:
    """Why the fetcher must not connect to ``address``, or ``None`` when it is a public unicast address."""
    if address in _METADATA_ADDRESSES:
        return "a cloud metadata address"
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id:
            return "a scoped (link-local) address"
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            inner = blocked_reason(embedded)
            return None if inner is None else f"an IPv6 form of {embedded}, {inner}"
        if int(address) >> 32 == 0 and int(address) > 1:
            return "a deprecated IPv4-compatible address"
    checks = (
        (address.is_unspecified, "the unspecified address"),
        (address.is_loopback, "a loopback address"),
        (address.is_link_local, "a link-local address"),
        (address.is_multicast, "a multicast address"),
        (address.is_private, "a private address"),
        (address.is_reserved, "a reserved address"),
        (isinstance(address, ipaddress.IPv6Address) and address.is_site_local, "a site-local address"),
        (any(address in network for network in _EXTRA_BLOCKED_NETWORKS), "a special-purpose address"),
        (not address.is_global, "not a globally routable address"),
    )
    for refused, reason in checks:
        if refused:
            return reason
    return None


def parse_numeric_host(host: str) -> IPAddress | None:
    """The address a numeric host means, in every spelling inet_aton accepts; ``None`` for a name.

    ``127.1``, ``2130706433``, ``0x7f000001`` and ``0177.0.0.1`` all mean 127.0.0.1 to the system resolver,
    so they are normalised here rather than passed to it. A host that looks numeric but is not a valid
    address raises ``ValueError`` (the WHATWG URL parser refuses those too).
    """
    if ":" in host:
        return ipaddress.IPv6Address(host)
    parts = host.split(".")
    if parts and parts[-1] == "":
        parts = parts[:-1]  # a trailing dot
    if not parts or not _NUMERIC_PART.match(parts[-1]):
        return None
    if len(parts) > 4 or not all(_NUMERIC_PART.match(part) for part in parts):
        raise ValueError(f"{host!r} is neither a host name nor an IPv4 address")
    values = [_parse_number(part, host) for part in parts]
    limits = [256] * (len(values) - 1) + [256 ** (5 - len(values))]
    if any(value >= limit for value, limit in zip(values, limits, strict=True)):
        raise ValueError(f"{host!r} is not a valid IPv4 address (a part is out of range)")
    number = values[-1]
    for index, value in enumerate(values[:-1]):
        number += value << (8 * (3 - index))
    return ipaddress.IPv4Address(number)


def _parse_number(part: str, host: str) -> int:
    try:
        if part[:2].lower() == "0x":
            return int(part[2:] or "0", 16)
        if len(part) > 1 and part.startswith("0"):
            return int(part, 8)
        return int(part, 10)
    except ValueError:
        raise ValueError(f"{host!r} is not a valid IPv4 address") from None


def system_resolver(host: str, port: int) -> list[str]:
    """The system's answer for ``host``, each address once, in the resolver's preference order."""
    answers = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[str] = []
    for _family, _type, _proto, _canonical, sockaddr in answers:
        if sockaddr[0] not in addresses:
            addresses.append(str(sockaddr[0]))
    return addresses


# -- the fetcher ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Target:
    url: str
    scheme: str
    host: str  # ASCII (IDNA) host name, or the normalised address text
    port: int
    path: str  # path and query, as sent
    literal: IPAddress | None  # the host was an address

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == _DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"

    def url_for(self, address: IPAddress) -> str:
        host = f"[{address}]" if address.version == 6 else str(address)
        return f"{self.scheme}://{host}:{self.port}{self.path}"


class Fetcher:
    """Downloads one input under a ``FetchPolicy``. Safe to share between concurrent requests."""

    def __init__(
        self,
        policy: FetchPolicy | None = None,
        *,
        resolver: Resolver = system_resolver,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """``ssl_context`` replaces the default trust store (certifi), e.g. with a private CA."""
        self.policy = policy or FetchPolicy()
        self._resolver = resolver
        self._verify: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True

    async def fetch(self, url: str, *, field: str, max_bytes: int) -> FetchedInput:
        """The body of ``url`` (after redirects), at most ``max_bytes`` long; refusals name ``field``."""
        timeout = httpx.Timeout(self.policy.timeout_seconds, connect=self.policy.connect_timeout_seconds)
        # The client is closed outside the deadline's scope, so a timed-out fetch still releases its sockets.
        async with httpx.AsyncClient(
            verify=self._verify, trust_env=False, follow_redirects=False, timeout=timeout
        ) as client:
            try:
                with anyio.fail_after(self.policy.timeout_seconds):
                    return await self._follow(client, url, field, max_bytes)
            except TimeoutError:
                raise _timeout(field, self.policy.timeout_seconds) from None

    async def check(self, url: str, *, field: str) -> None:
        """Refuse ``url`` now (``InputRejected`` naming ``field``) if a request to it would be refused."""
        await self._addresses(self._parse(url, field), field)

    async def post(self, url: str, content: bytes, headers: dict[str, str], *, field: str) -> int:
        """POST ``content`` to ``url`` under the same guard as a fetch (no redirects followed); the status."""
        target = self._parse(url, field)
        addresses = await self._addresses(target, field)
        timeout = httpx.Timeout(self.policy.timeout_seconds, connect=self.policy.connect_timeout_seconds)
        async with httpx.AsyncClient(verify=self._verify, trust_env=False, timeout=timeout) as client:
            response = await self._open(
                client, target, addresses, field, method="POST", content=content, extra=headers
            )
            await response.aclose()
            return response.status_code

    async def _follow(self, client: httpx.AsyncClient, url: str, field: str, max_bytes: int) -> FetchedInput:
        current = url
        for _hop in range(self.policy.max_redirects + 1):
            target = self._parse(current, field)
            addresses = await self._addresses(target, field)
            response = await self._open(client, target, addresses, field)
            try:
                if response.status_code in _REDIRECT_STATUSES:
                    location = response.headers.get("location")
                    if not location:
                        raise _failed(field, f"the server answered {response.status_code} without a Location")
                    current = urljoin(target.url, location.strip())
                    continue
                if response.status_code != 200:
                    raise _failed(field, f"the server answered HTTP {response.status_code}")
                data = await self._read(response, field, max_bytes)
            finally:
                with anyio.CancelScope(shield=True):
                    await response.aclose()
            logger.info("fetched %d bytes for %s from %s", len(data), field, target.host)
            return FetchedInput(
                data=data,
                url=target.url,
                filename=_filename(target.path),
                content_type=response.headers.get("content-type"),
            )
        raise _failed(field, f"more than {self.policy.max_redirects} redirects")

    def _parse(self, url: str, field: str) -> _Target:
        if not isinstance(url, str) or any(ord(char) < 0x21 or ord(char) == 0x7F for char in url):
            raise _blocked(field, "the URL contains whitespace or control characters")
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise _blocked(field, "the URL is malformed") from None
        scheme = parts.scheme.lower()
        plain_http = self.policy.allow_http_and_private or self.policy.http_networks
        allowed = ("https", "http") if plain_http else ("https",)
        if scheme not in allowed:
            raise _blocked(field, f"only {' and '.join(s + '://' for s in allowed)} URLs are fetched")
        if parts.username is not None or parts.password is not None:
            raise _blocked(field, "URLs with credentials (user@host) are not fetched")
        raw_host = (parts.hostname or "").rstrip(".")
        if not raw_host:
            raise _blocked(field, "the URL has no host")
        try:
            literal = parse_numeric_host(raw_host)
        except ValueError as error:
            raise _blocked(field, str(error)) from None
        if scheme == "http" and not self.policy.allow_http_and_private and literal is None:
            # Plain http only to an address of http_networks, given as such: no name is looked up for it.
            raise _blocked(field, f"http:// only to {_networks(self.policy.http_networks)}; use https://")
        if literal is not None:
            host = str(literal)
        else:
            host = self._ascii_host(raw_host, field)
            if not self.policy.allow_http_and_private and _is_local_name(host):
                raise _blocked(field, f"the host {host} is a local or internal name")
        path = parts.path or "/"
        if parts.query:
            path = f"{path}?{parts.query}"
        return _Target(
            url=url,
            scheme=scheme,
            host=host,
            port=port if port is not None else _DEFAULT_PORTS[scheme],
            path=path,
            literal=literal,
        )

    @staticmethod
    def _ascii_host(host: str, field: str) -> str:
        try:
            ascii_host = host if host.isascii() else idna.encode(host, uts46=True).decode("ascii")
        except idna.IDNAError:
            raise _blocked(field, "the URL's host name is not valid") from None
        ascii_host = ascii_host.lower()
        if len(ascii_host) > 253 or not all(_HOST_LABEL.match(label) for label in ascii_host.split(".")):
            raise _blocked(field, "the URL's host name is not valid")
        return ascii_host

    async def _addresses(self, target: _Target, field: str) -> list[IPAddress]:
        """The checked addresses to connect to: all of them public (or exempt), else the hop is refused."""
        if target.literal is not None:
            addresses = [target.literal]
        else:
            try:
                answers = await anyio.to_thread.run_sync(
                    self._resolver, target.host, target.port, abandon_on_cancel=True
                )
            except OSError:
                raise _failed(field, f"the host {target.host} cannot be resolved") from None
            try:
                # ipaddress, not the resolver's spelling, decides what an answer is (scope ids stay attached).
                addresses = list(dict.fromkeys(ipaddress.ip_address(answer) for answer in answers))
            except ValueError:
                raise _failed(field, f"the host {target.host} resolved to an invalid address") from None
        if not addresses:
            raise _failed(field, f"the host {target.host} has no addresses")
        if not self.policy.allow_http_and_private:
            for address in addresses:
                if any(address in network for network in self.policy.http_networks):
                    continue
                if target.scheme == "http":
                    raise _blocked(
                        field, f"http:// only to {_networks(self.policy.http_networks)}; use https://"
                    )
                if any(address in network for network in self.policy.allowed_networks):
                    continue
                reason = blocked_reason(address)
                if reason is not None:
                    logger.warning(
                        "refused to fetch %s for %s: %s is %s", target.host, field, address, reason
                    )
                    raise _blocked(field, f"the host {target.host} resolves to {reason}")
        return addresses

    async def _open(
        self,
        client: httpx.AsyncClient,
        target: _Target,
        addresses: list[IPAddress],
        field: str,
        *,
        method: str = "GET",
        content: bytes | None = None,
        extra: dict[str, str] | None = None,
    ) -> httpx.Response:
        headers = {
            "Host": target.host_header,
            "User-Agent": self.policy.user_agent,
            "Accept": "*/*",
            # Compressed bodies would make the byte cap count the wrong bytes (and media is compressed).
            "Accept-Encoding": "identity",
            **(extra or {}),
        }
        # Certificates are checked against the name, while the connection goes to the pinned address.
        extensions = (
            {"sni_hostname": target.host} if target.scheme == "https" and target.literal is None else {}
        )
        last_error: httpx.TransportError | None = None
        for address in addresses:
            request = client.build_request(
                method, target.url_for(address), headers=headers, content=content, extensions=extensions
            )
            try:
                return await client.send(request, stream=True)
            except httpx.TimeoutException:
                raise _timeout(field, self.policy.timeout_seconds) from None
            except httpx.ConnectError as error:
                last_error = error
                continue
            except httpx.TransportError as error:
                raise _failed(field, f"the download from {target.host} failed ({_describe(error)})") from None
        raise _failed(field, f"cannot connect to {target.host} ({_describe(last_error)})")

    async def _read(self, response: httpx.Response, field: str, max_bytes: int) -> bytes:
        declared = response.headers.get("content-length")
        if declared is not None:
            if not _DIGITS.match(declared.strip()):
                raise _failed(field, "the server sent an invalid Content-Length")
            if int(declared) > max_bytes:
                raise InputTooLarge(field, max_bytes)
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise _failed(
                field, f"the server sent a {encoding}-encoded body despite Accept-Encoding: identity"
            )
        body = bytearray()
        try:
            async for chunk in response.aiter_raw():
                body += chunk
                if len(body) > max_bytes:
                    raise InputTooLarge(field, max_bytes)
        except httpx.TimeoutException:
            raise _timeout(field, self.policy.timeout_seconds) from None
        except httpx.TransportError as error:
            raise _failed(field, f"the download broke off ({_describe(error)})") from None
        return bytes(body)


def _networks(networks: Sequence[IPNetwork]) -> str:
    return ", ".join(str(network) for network in networks)


def _is_local_name(host: str) -> bool:
    if "." not in host:
        return True  # a single label resolves through search domains: the local network
    return any(host == suffix or host.endswith(f".{suffix}") for suffix in _LOCAL_NAME_SUFFIXES)


def _filename(path: str) -> str:
    name = unquote(path.split("?", 1)[0].rsplit("/", 1)[-1])
    return "".join(char for char in name if char.isprintable())[:100] or "download"


def _describe(error: Exception | None) -> str:
    if error is None:
        return "no address"
    text = str(error)
    if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
        return "TLS certificate not valid for the host"
    return type(error).__name__
