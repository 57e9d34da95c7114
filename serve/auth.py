"""Bearer tokens → tenants, and each tenant's own limits.

Tokens come from a YAML/JSON file and/or an environment variable (``"tok1:tenantA,tok2:tenantB"``). The file
is either a plain mapping token → tenant, or::

    tokens:
      <token>: acme
    tenants:                       # optional: a tenant's own caps (the others get the queue config's)
      acme: {max_queued: 100, max_running: 2, max_upload_bytes: 1073741824}

The file is re-read when it changes (``refresh``, called by the ingress's maintenance loop every few
seconds), so revoking a token or changing a cap needs no redeploy; a file that no longer parses is refused
with an error in the log and the tokens in force stay. Only SHA-256 digests of tokens are kept in memory,
every lookup compares the presented digest against all of them with ``hmac.compare_digest`` (no early exit,
so the time taken does not depend on which token, if any, matched), and no token is ever logged or put in an
error message: config errors name the position of the offending entry instead.

``auth: none`` is an explicit development mode in which every request is tenant ``local``; nothing here
falls back to it. No HTTP here: ``serve.api.security`` puts this in front of the routes.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from serve.jobs.operations import TenantLimits

if TYPE_CHECKING:
    from serve.config import AuthConfig

logger = logging.getLogger(__name__)

LOCAL_TENANT = "local"
# Tenants become storage key segments and Redis key parts, so they are held to a narrow charset.
TENANT_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
# RFC 6750 b64token.
_TOKEN_PATTERN = re.compile(r"^[A-Za-z0-9\-._~+/]+=*\Z")
_BEARER_PATTERN = re.compile(r"^[Bb][Ee][Aa][Rr][Ee][Rr] +(\S+) *\Z")
_SHORT_TOKEN_CHARS = 16
_LIMIT_FIELDS = ("max_queued", "max_running", "max_upload_bytes")


class AuthConfigError(ValueError):
    """The token configuration is unusable; the message never contains a token."""


class AuthenticationFailed(Exception):
    """Missing, malformed, unknown or revoked token (a 401)."""

    def __init__(self, message: str, *, token_sent: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.token_sent = token_sent


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


@dataclass(frozen=True)
class TokenFile:
    """What a tokens file holds."""

    tokens: dict[str, str]
    limits: dict[str, TenantLimits] = field(default_factory=dict)


@dataclass(frozen=True)
class _Table:
    digests: tuple[tuple[bytes, str], ...]
    limits: dict[str, TenantLimits]


class Authenticator:
    """Maps a request's ``Authorization`` header to a tenant id, or refuses it (``AuthenticationFailed``)."""

    def __init__(
        self,
        tokens: Mapping[str, str],
        *,
        limits: Mapping[str, TenantLimits] | None = None,
        disabled: bool = False,
        tokens_file: str | os.PathLike[str] | None = None,
        env_tokens: Mapping[str, str] | None = None,
    ) -> None:
        """``tokens``: token → tenant. ``tokens_file``: where they came from, re-read by ``refresh`` (merged
        with ``env_tokens`` each time). Use ``disabled_for_development()`` for the development mode."""
        if disabled:
            if tokens:
                raise AuthConfigError("auth 'none' takes no tokens")
            logger.warning(
                "authentication is disabled (auth: none): every request is tenant %r", LOCAL_TENANT
            )
        self._disabled = disabled
        self._file = Path(tokens_file) if tokens_file is not None else None
        self._env_tokens = dict(env_tokens or {})
        self._file_stamp = self._stamp()
        self._lock = threading.Lock()
        self._table = self._build(tokens, limits or {})

    @classmethod
    def disabled_for_development(cls) -> Authenticator:
        return cls({}, disabled=True)

    @classmethod
    def from_config(cls, config: AuthConfig, environ: Mapping[str, str] | None = None) -> Authenticator:
        """Tokens of ``config.tokens_file`` merged with those of the ``config.tokens_env`` variable."""
        if config.mode == "none":
            return cls.disabled_for_development()
        environ = os.environ if environ is None else environ
        env_value = environ.get(config.tokens_env, "")
        env_tokens = parse_tokens_env(env_value, variable=config.tokens_env) if env_value.strip() else {}
        loaded = load_tokens_file(config.tokens_file) if config.tokens_file else TokenFile({})
        tokens = _merged(loaded.tokens, env_tokens, config.tokens_env)
        authenticator = cls(
            tokens, limits=loaded.limits, tokens_file=config.tokens_file, env_tokens=env_tokens
        )
        sources = [f"file {config.tokens_file}"] if config.tokens_file else []
        if env_tokens:
            sources.append(f"${config.tokens_env}")
        logger.info(
            "loaded %d API tokens for %d tenants from %s",
            len(tokens),
            len(set(tokens.values())),
            " and ".join(sources),
        )
        return authenticator

    @property
    def limits(self) -> dict[str, TenantLimits]:
        """The tenants' own caps, as the tokens file gives them now."""
        return dict(self._table.limits)

    def _build(self, tokens: Mapping[str, str], limits: Mapping[str, TenantLimits]) -> _Table:
        if not self._disabled and not tokens:
            raise AuthConfigError("no API tokens are configured; set a tokens file or the tokens variable")
        digests = []
        for position, (token, tenant) in enumerate(tokens.items(), start=1):
            _check_entry(token, tenant, f"token #{position}")
            if len(token) < _SHORT_TOKEN_CHARS:
                logger.warning(
                    "token #%d (tenant %s) is shorter than %d characters; use long random tokens",
                    position,
                    tenant,
                    _SHORT_TOKEN_CHARS,
                )
            digests.append((_digest(token), tenant))
        return _Table(tuple(digests), dict(limits))

    def _stamp(self) -> tuple[int, int, int] | None:
        if self._file is None:
            return None
        try:
            stat = self._file.stat()
        except OSError:
            return None
        return (stat.st_mtime_ns, stat.st_size, stat.st_ino)

    def refresh(self) -> bool:
        """Re-read the tokens file if it changed; whether the tokens or limits in force changed.

        A file that is missing or does not parse keeps the tokens in force (logged): an editor's half-written
        file must not lock every client out.
        """
        if self._file is None:
            return False
        stamp = self._stamp()
        with self._lock:
            if stamp == self._file_stamp:
                return False
            self._file_stamp = stamp
            try:
                loaded = load_tokens_file(self._file)
                table = self._build(
                    _merged(loaded.tokens, self._env_tokens, "the tokens variable"), loaded.limits
                )
            except AuthConfigError as error:
                logger.error(
                    "the tokens file changed but cannot be used (%s); the tokens in force stay", error
                )
                return False
            self._table = table
        logger.info("reloaded the tokens file %s: %d tokens", self._file, len(table.digests))
        return True

    def authenticate(self, authorization: str | None) -> str:
        """Tenant of the ``Authorization`` header's bearer token."""
        if self._disabled:
            return LOCAL_TENANT
        if authorization is None or not authorization.strip():
            raise AuthenticationFailed("Missing 'Authorization: Bearer <token>' header.")
        match = _BEARER_PATTERN.match(authorization.strip())
        if match is None or not _TOKEN_PATTERN.match(match.group(1)):
            raise AuthenticationFailed(
                "Malformed Authorization header; expected 'Bearer <token>'.", token_sent=True
            )
        presented = _digest(match.group(1))
        tenant = None
        for digest, candidate in self._table.digests:
            if hmac.compare_digest(digest, presented):
                tenant = candidate
        if tenant is None:
            raise AuthenticationFailed("Unknown or revoked token.", token_sent=True)
        return tenant


def _merged(file_tokens: Mapping[str, str], env_tokens: Mapping[str, str], variable: str) -> dict[str, str]:
    tokens = dict(file_tokens)
    for token, tenant in env_tokens.items():
        if tokens.get(token, tenant) != tenant:
            raise AuthConfigError(f"a token in ${variable} is also in the tokens file with another tenant")
        tokens[token] = tenant
    return tokens


def _check_entry(token: object, tenant: object, where: str) -> None:
    if not isinstance(token, str) or not _TOKEN_PATTERN.match(token):
        raise AuthConfigError(f"{where}: a token must be a non-empty string of RFC 6750 token characters")
    _check_tenant(tenant, where)


def _check_tenant(tenant: object, where: str) -> None:
    if not isinstance(tenant, str) or not TENANT_PATTERN.match(tenant):
        raise AuthConfigError(
            f"{where}: tenant {tenant!r} must be 1-64 characters of letters, digits, '_', '.', '-' "
            "starting with a letter or digit"
        )


def load_tokens_file(path: str | os.PathLike[str]) -> TokenFile:
    """A YAML or JSON file: a mapping token → tenant, or ``tokens:`` and ``tenants:`` (module docstring)."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as error:
        raise AuthConfigError(f"cannot read the tokens file {file}: {error.strerror or error}") from None
    try:
        data = yaml.safe_load(text) if file.suffix.lower() != ".json" else json.loads(text)
    except (yaml.YAMLError, json.JSONDecodeError):
        # The parser's message quotes the offending line, which may be a token.
        raise AuthConfigError(f"the tokens file {file} is not valid YAML/JSON") from None
    if not isinstance(data, Mapping):
        raise AuthConfigError(f"the tokens file {file} must hold a mapping of token → tenant")
    structured = set(data) <= {"tokens", "tenants"} and isinstance(data.get("tokens"), Mapping)
    entries = data["tokens"] if structured else data
    tokens: dict[str, str] = {}
    for position, (token, tenant) in enumerate(entries.items(), start=1):
        _check_entry(token, tenant, f"{file}: entry #{position}")
        tokens[token] = tenant
    limits = _tenant_limits(data.get("tenants") or {}, file) if structured else {}
    return TokenFile(tokens, limits)


def _tenant_limits(section: Any, file: Path) -> dict[str, TenantLimits]:
    if not isinstance(section, Mapping):
        raise AuthConfigError(f"{file}: 'tenants' must map tenant → its limits")
    limits = {}
    for tenant, values in section.items():
        where = f"{file}: tenants.{tenant}"
        _check_tenant(tenant, f"{file}: tenants")
        if not isinstance(values, Mapping) or not set(values) <= set(_LIMIT_FIELDS):
            raise AuthConfigError(f"{where}: give any of {', '.join(_LIMIT_FIELDS)}")
        for name, value in values.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise AuthConfigError(f"{where}.{name}: a whole number of at least 0, got {value!r}")
        limits[tenant] = TenantLimits(**values)
    return limits


def parse_tokens_env(value: str, *, variable: str = "INFINITETALK_API_TOKENS") -> dict[str, str]:
    """``"tok1:tenantA,tok2:tenantB"`` → mapping; whitespace around entries is ignored."""
    tokens: dict[str, str] = {}
    for position, entry in enumerate((part.strip() for part in value.split(",")), start=1):
        if not entry:
            continue
        token, separator, tenant = entry.rpartition(":")
        if not separator:
            raise AuthConfigError(f"${variable}: entry #{position} is not 'token:tenant'")
        where = f"${variable}: entry #{position}"
        _check_entry(token.strip(), tenant.strip(), where)
        if tokens.get(token.strip(), tenant.strip()) != tenant.strip():
            raise AuthConfigError(f"{where}: the same token is given twice with different tenants")
        tokens[token.strip()] = tenant.strip()
    return tokens
