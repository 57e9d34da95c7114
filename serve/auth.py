"""Bearer tokens → tenants.

Tokens come from a YAML/JSON file (a mapping token → tenant) and/or an environment variable
(``"tok1:tenantA,tok2:tenantB"``). Only SHA-256 digests of tokens are kept in memory, every lookup compares
the presented digest against all of them with ``hmac.compare_digest`` (no early exit, so the time taken does
not depend on which token, if any, matched), and no token is ever logged or put in an error message: config
errors name the position of the offending entry instead.

``auth: none`` is an explicit development mode in which every request is tenant ``local``; nothing here
falls back to it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import yaml
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from serve.api.errors import InternalError, Unauthorized, handle_validation_error

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
_STATE_ATTRIBUTE = "authenticator"


class AuthConfigError(ValueError):
    """The token configuration is unusable; the message never contains a token."""


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


class Authenticator:
    """Maps a request's ``Authorization`` header to a tenant id, or refuses it with a 401."""

    def __init__(self, tokens: Mapping[str, str], *, disabled: bool = False) -> None:
        """``tokens``: token → tenant. Use ``disabled()`` for the development mode, not an empty mapping."""
        if disabled:
            if tokens:
                raise AuthConfigError("auth 'none' takes no tokens")
            logger.warning(
                "authentication is disabled (auth: none): every request is tenant %r", LOCAL_TENANT
            )
        elif not tokens:
            raise AuthConfigError("no API tokens are configured; set a tokens file or the tokens variable")
        self._disabled = disabled
        self._digests: list[tuple[bytes, str]] = []
        for position, (token, tenant) in enumerate(tokens.items(), start=1):
            _check_entry(token, tenant, f"token #{position}")
            if len(token) < _SHORT_TOKEN_CHARS:
                logger.warning(
                    "token #%d (tenant %s) is shorter than %d characters; use long random tokens",
                    position,
                    tenant,
                    _SHORT_TOKEN_CHARS,
                )
            self._digests.append((_digest(token), tenant))

    @classmethod
    def disabled_for_development(cls) -> Authenticator:
        return cls({}, disabled=True)

    @classmethod
    def from_config(cls, config: AuthConfig, environ: Mapping[str, str] | None = None) -> Authenticator:
        """Tokens of ``config.tokens_file`` merged with those of the ``config.tokens_env`` variable."""
        if config.mode == "none":
            return cls.disabled_for_development()
        environ = os.environ if environ is None else environ
        tokens: dict[str, str] = {}
        sources = []
        if config.tokens_file:
            tokens.update(load_tokens_file(config.tokens_file))
            sources.append(f"file {config.tokens_file}")
        env_value = environ.get(config.tokens_env, "")
        if env_value.strip():
            for token, tenant in parse_tokens_env(env_value, variable=config.tokens_env).items():
                if tokens.get(token, tenant) != tenant:
                    raise AuthConfigError(
                        f"a token in ${config.tokens_env} is also in the tokens file with another tenant"
                    )
                tokens[token] = tenant
            sources.append(f"${config.tokens_env}")
        authenticator = cls(tokens)
        logger.info(
            "loaded %d API tokens for %d tenants from %s",
            len(tokens),
            len(set(tokens.values())),
            " and ".join(sources),
        )
        return authenticator

    @property
    def enabled(self) -> bool:
        return not self._disabled

    def authenticate(self, authorization: str | None) -> str:
        """Tenant of the ``Authorization`` header's bearer token; ``Unauthorized`` if there is none."""
        if self._disabled:
            return LOCAL_TENANT
        if authorization is None or not authorization.strip():
            raise Unauthorized("Missing 'Authorization: Bearer <token>' header.")
        match = _BEARER_PATTERN.match(authorization.strip())
        if match is None or not _TOKEN_PATTERN.match(match.group(1)):
            raise Unauthorized("Malformed Authorization header; expected 'Bearer <token>'.", token_sent=True)
        presented = _digest(match.group(1))
        tenant = None
        for digest, candidate in self._digests:
            if hmac.compare_digest(digest, presented):
                tenant = candidate
        if tenant is None:
            raise Unauthorized("Unknown or revoked token.", token_sent=True)
        return tenant


def _check_entry(token: object, tenant: object, where: str) -> None:
    if not isinstance(token, str) or not _TOKEN_PATTERN.match(token):
        raise AuthConfigError(f"{where}: a token must be a non-empty string of RFC 6750 token characters")
    if not isinstance(tenant, str) or not TENANT_PATTERN.match(tenant):
        raise AuthConfigError(
            f"{where}: tenant {tenant!r} must be 1-64 characters of letters, digits, '_', '.', '-' "
            "starting with a letter or digit"
        )


def load_tokens_file(path: str | os.PathLike[str]) -> dict[str, str]:
    """A YAML or JSON file holding one mapping token → tenant (JSON is YAML, so one parser reads both)."""
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
    tokens: dict[str, str] = {}
    for position, (token, tenant) in enumerate(data.items(), start=1):
        _check_entry(token, tenant, f"{file}: entry #{position}")
        tokens[token] = tenant
    return tokens


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


# -- FastAPI -------------------------------------------------------------------------------------------------

# Declares the scheme in the OpenAPI document (the "Authorize" button of /docs); the header itself is parsed
# by the Authenticator so missing and malformed headers get distinct messages.
_bearer_scheme = HTTPBearer(auto_error=False, scheme_name="BearerToken", description="API token of a tenant")


def install_authenticator(app: FastAPI, authenticator: Authenticator) -> None:
    """Make ``require_tenant`` use ``authenticator``, and put its 401 before a malformed body's 400.

    FastAPI decodes a JSON body before it runs any dependency, so without the handler below a caller with
    no valid token would learn that its body was not JSON; every other error comes after the 401 already.
    """
    setattr(app.state, _STATE_ATTRIBUTE, authenticator)

    async def refuse_unauthenticated_first(request: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, RequestValidationError) and any(
            error.get("type") == "json_invalid" for error in exc.errors()
        ):
            try:
                authenticator.authenticate(request.headers.get("authorization"))
            except Unauthorized as error:
                return error.to_response()
        return await handle_validation_error(request, exc)

    app.add_exception_handler(RequestValidationError, refuse_unauthenticated_first)


async def require_tenant(
    request: Request,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer_scheme)] = None,
) -> str:
    """Dependency: the caller's tenant id (401 otherwise). Also kept on ``request.state.tenant`` for logs."""
    authenticator = getattr(request.app.state, _STATE_ATTRIBUTE, None)
    if not isinstance(authenticator, Authenticator):
        logger.error("no authenticator installed on the app; refusing the request")
        raise InternalError()
    tenant = authenticator.authenticate(request.headers.get("authorization"))
    request.state.tenant = tenant
    return tenant
