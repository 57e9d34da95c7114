"""Tokens → tenants: sources, the 401s, constant-time comparison, and tokens never appearing in logs."""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Annotated

import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient

import serve.auth
from serve.api.errors import install_error_handlers
from serve.api.security import install_authenticator, require_tenant
from serve.auth import (
    LOCAL_TENANT,
    AuthConfigError,
    AuthenticationFailed,
    Authenticator,
    load_tokens_file,
    parse_tokens_env,
)
from serve.config import AuthConfig
from serve.jobs.operations import TenantLimits

TOKEN_A = "tokA-0123456789abcdef0123456789"
TOKEN_B = "tokB-fedcba9876543210fedcba9876"


def test_parse_env() -> None:
    assert parse_tokens_env(f" {TOKEN_A}:tenantA , {TOKEN_B}:tenant-b ,") == {
        TOKEN_A: "tenantA",
        TOKEN_B: "tenant-b",
    }


@pytest.mark.parametrize(
    "value",
    [
        "no-separator",
        f"{TOKEN_A}:",
        ":tenant",
        f"{TOKEN_A}:ten ant",
        f"{TOKEN_A}:../etc",
        f"{TOKEN_A}:tenantA,{TOKEN_A}:tenantB",
        "tok with space:tenant",
    ],
)
def test_parse_env_refuses_bad_entries_without_echoing_tokens(value: str) -> None:
    with pytest.raises(AuthConfigError) as caught:
        parse_tokens_env(value)
    assert TOKEN_A not in str(caught.value) and "tok with space" not in str(caught.value)


def test_load_yaml_and_json_files(tmp_path: Path) -> None:
    yaml_file = tmp_path / "tokens.yaml"
    yaml_file.write_text(f"{TOKEN_A}: tenantA\n{TOKEN_B}: tenantB\n")
    json_file = tmp_path / "tokens.json"
    json_file.write_text(json.dumps({TOKEN_A: "tenantA"}))
    assert load_tokens_file(yaml_file).tokens == {TOKEN_A: "tenantA", TOKEN_B: "tenantB"}
    assert load_tokens_file(json_file).tokens == {TOKEN_A: "tenantA"}


@pytest.mark.parametrize(
    "content",
    [
        f"- {TOKEN_A}\n",  # a list, not a mapping
        f"{TOKEN_A}: [tenantA]\n",  # tenant not a string
        f"{TOKEN_A}: 'bad tenant'\n",
        f"{TOKEN_A}: tenantA\n  broken: : yaml: [\n",
    ],
)
def test_bad_tokens_file_is_refused_without_echoing_tokens(tmp_path: Path, content: str) -> None:
    path = tmp_path / "tokens.yaml"
    path.write_text(content)
    with pytest.raises(AuthConfigError) as caught:
        load_tokens_file(path)
    assert TOKEN_A not in str(caught.value)


def test_missing_tokens_file(tmp_path: Path) -> None:
    with pytest.raises(AuthConfigError, match="cannot read"):
        load_tokens_file(tmp_path / "absent.yaml")


def test_from_config_merges_file_and_env(tmp_path: Path) -> None:
    path = tmp_path / "tokens.yaml"
    path.write_text(f"{TOKEN_A}: tenantA\n")
    config = AuthConfig(mode="tokens", tokens_file=str(path), tokens_env="TEST_TOKENS")
    auth = Authenticator.from_config(config, environ={"TEST_TOKENS": f"{TOKEN_B}:tenantB"})
    assert auth.authenticate(f"Bearer {TOKEN_A}") == "tenantA"
    assert auth.authenticate(f"Bearer {TOKEN_B}") == "tenantB"
    with pytest.raises(AuthConfigError, match="another tenant"):
        Authenticator.from_config(config, environ={"TEST_TOKENS": f"{TOKEN_A}:tenantB"})


def test_tokens_mode_without_tokens_refuses_to_start() -> None:
    config = AuthConfig(mode="tokens", tokens_env="TEST_TOKENS")
    with pytest.raises(AuthConfigError, match="no API tokens"):
        Authenticator.from_config(config, environ={})
    with pytest.raises(AuthConfigError):
        Authenticator({})


def test_default_config_is_not_auth_none() -> None:
    assert AuthConfig().mode == "tokens"
    with pytest.raises(AuthConfigError):
        Authenticator.from_config(AuthConfig(), environ={})


def test_auth_none_is_explicit_single_tenant(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="serve.auth"):
        auth = Authenticator.from_config(AuthConfig(mode="none"), environ={"INFINITETALK_API_TOKENS": "x:y"})
    assert auth.authenticate(None) == LOCAL_TENANT
    assert auth.authenticate("Bearer anything") == LOCAL_TENANT
    assert "disabled" in caplog.text
    with pytest.raises(AuthConfigError):
        Authenticator({TOKEN_A: "a"}, disabled=True)


@pytest.fixture
def auth() -> Authenticator:
    return Authenticator({TOKEN_A: "tenantA", TOKEN_B: "tenantB"})


def test_authenticate_valid_tokens(auth: Authenticator) -> None:
    assert auth.authenticate(f"Bearer {TOKEN_A}") == "tenantA"
    assert auth.authenticate(f"bearer   {TOKEN_B} ") == "tenantB"


@pytest.mark.parametrize(
    ("header", "token_sent"),
    [
        (None, False),
        ("", False),
        ("   ", False),
        (f"Basic {TOKEN_A}", True),
        ("Bearer", True),
        ("Bearer ", True),
        (f"Bearer {TOKEN_A} extra", True),
        (f"Token {TOKEN_A}", True),
        ("Bearer tok\x00en", True),
        ("Bearer unknown-token-0123456789abcdef", True),
        (f"Bearer {TOKEN_A}x", True),
        (f"Bearer {TOKEN_A[:-1]}", True),
    ],
)
def test_authenticate_refuses(auth: Authenticator, header: str | None, token_sent: bool) -> None:
    with pytest.raises(AuthenticationFailed) as caught:
        auth.authenticate(header)
    assert caught.value.token_sent is token_sent
    assert TOKEN_A not in caught.value.message


def test_every_token_is_compared_whichever_matches(
    auth: Authenticator, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real = serve.auth.hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append(1)
        return real(a, b)

    monkeypatch.setattr(serve.auth.hmac, "compare_digest", counting)
    for header in (f"Bearer {TOKEN_A}", f"Bearer {TOKEN_B}", "Bearer nobody-0123456789abcdef"):
        calls.clear()
        with contextlib.suppress(AuthenticationFailed):
            auth.authenticate(header)
        assert len(calls) == 2


def test_tokens_are_never_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "tokens.yaml"
    path.write_text(f"{TOKEN_A}: tenantA\nshort: tenantC\n")
    with caplog.at_level(logging.DEBUG):
        auth = Authenticator.from_config(
            AuthConfig(tokens_file=str(path), tokens_env="T"), environ={"T": f"{TOKEN_B}:tenantB"}
        )
        for header in (f"Bearer {TOKEN_A}", f"Bearer {TOKEN_B}x"):
            with contextlib.suppress(AuthenticationFailed):
                auth.authenticate(header)
    assert "loaded 3 API tokens" in caplog.text
    assert "shorter than" in caplog.text  # the short token is flagged by position, not echoed
    assert TOKEN_A not in caplog.text and TOKEN_B not in caplog.text and "short:" not in caplog.text


def _app(auth: Authenticator | None) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    if auth is not None:
        install_authenticator(app, auth)

    @app.get("/v1/whoami")
    async def whoami(tenant: Annotated[str, Depends(require_tenant)]) -> dict[str, str]:
        return {"tenant": tenant}

    return app


def test_dependency_gives_tenant_or_401(auth: Authenticator) -> None:
    client = TestClient(_app(auth))
    response = client.get("/v1/whoami", headers={"Authorization": f"Bearer {TOKEN_B}"})
    assert response.status_code == 200 and response.json() == {"tenant": "tenantB"}
    response = client.get("/v1/whoami")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer realm="infinitetalk"'
    assert response.json()["error"]["code"] == "unauthorized"
    response = client.get("/v1/whoami", headers={"Authorization": "Bearer wrong-token-0123456789"})
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    response = client.get("/v1/whoami", headers={"Authorization": f"Basic {TOKEN_A}"})
    assert response.status_code == 401 and "Malformed" in response.json()["error"]["message"]


def test_dependency_without_authenticator_fails_closed() -> None:
    response = TestClient(_app(None), raise_server_exceptions=False).get(
        "/v1/whoami", headers={"Authorization": f"Bearer {TOKEN_A}"}
    )
    assert response.status_code == 500 and response.json()["error"]["code"] == "internal_error"


def test_openapi_declares_bearer_scheme(auth: Authenticator) -> None:
    document = TestClient(_app(auth)).get("/openapi.json").json()
    assert document["components"]["securitySchemes"]["BearerToken"] == {
        "type": "http",
        "description": "API token of a tenant",
        "scheme": "bearer",
    }


def test_a_structured_tokens_file_gives_tenants_their_own_limits(tmp_path: Path) -> None:
    path = tmp_path / "tokens.yaml"
    path.write_text(
        f"tokens:\n  {TOKEN_A}: tenantA\n  {TOKEN_B}: tenantB\n"
        "tenants:\n  tenantA: {max_queued: 10, max_running: 1}\n"
    )
    loaded = load_tokens_file(path)
    assert loaded.tokens == {TOKEN_A: "tenantA", TOKEN_B: "tenantB"}
    assert loaded.limits == {"tenantA": TenantLimits(max_queued=10, max_running=1)}


@pytest.mark.parametrize(
    ("tenants", "match"),
    [
        ("tenantA: {max_queued: -1}", "max_queued"),
        ("tenantA: {max_parallel: 2}", "give any of"),
        ("tenantA: {max_running: true}", "max_running"),
        ("'bad tenant': {max_queued: 1}", "tenant"),
    ],
)
def test_bad_tenant_limits_are_refused_by_name(tmp_path: Path, tenants: str, match: str) -> None:
    path = tmp_path / "tokens.yaml"
    path.write_text(f"tokens:\n  {TOKEN_A}: tenantA\ntenants:\n  {tenants}\n")
    with pytest.raises(AuthConfigError, match=match):
        load_tokens_file(path)


def test_a_changed_tokens_file_is_reloaded_and_a_broken_one_ignored(tmp_path: Path, caplog) -> None:
    """Defect: tokens were loaded once at start, so revoking one needed a redeploy."""
    path = tmp_path / "tokens.yaml"
    path.write_text(f"{TOKEN_A}: tenantA\n{TOKEN_B}: tenantB\n")
    auth = Authenticator.from_config(AuthConfig(tokens_file=str(path), tokens_env="T"), environ={})
    assert not auth.refresh()  # unchanged
    path.write_text(f"tokens:\n  {TOKEN_B}: tenantB\ntenants:\n  tenantB: {{max_running: 2}}\n")
    assert auth.refresh()
    with pytest.raises(AuthenticationFailed, match="revoked"):
        auth.authenticate(f"Bearer {TOKEN_A}")
    assert auth.authenticate(f"Bearer {TOKEN_B}") == "tenantB"
    assert auth.limits == {"tenantB": TenantLimits(max_running=2)}
    path.write_text("{ not yaml: [")
    with caplog.at_level(logging.ERROR):
        assert not auth.refresh()
    assert "cannot be used" in caplog.text and auth.authenticate(f"Bearer {TOKEN_B}") == "tenantB"
