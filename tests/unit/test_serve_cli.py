"""``python -m serve drain|resume`` against a real Redis named by the config."""

from __future__ import annotations

import http.server
import json
import sys
import threading
from pathlib import Path

import pytest
import yaml

from serve.__main__ import main, ray_serve_cli, wait_ready
from serve.config import AppConfig
from serve.jobs import JobRecord, JobSettings
from serve.jobs.embedded_redis import EmbeddedRedis
from serve.services import Services

SETTINGS = JobSettings(prompt="", width=64, height=64, frames=5, seed=1, steps=2, shift=5.0, cfg=1.0)


@pytest.fixture()
def config_path(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.delenv("INFINITETALK_REDIS_URL", raising=False)
    server = EmbeddedRedis(tmp_path / "redis").start()
    path = tmp_path / "serve.yaml"
    args = {"redis": {"url": server.url}}
    path.write_text(yaml.safe_dump({"applications": [{"name": "infinitetalk", "args": args}]}))
    yield path
    server.stop()


def store_of(config_path: Path):
    args = yaml.safe_load(config_path.read_text())["applications"][0]["args"]
    config = AppConfig.model_validate(args)
    return Services(config, config.redis.url).store


def test_drain_then_resume(config_path: Path) -> None:
    store = store_of(config_path)
    assert main(["drain", "--config", str(config_path), "--retry-after", "45"]) == 0
    assert store.draining_retry_after() == 45
    assert main(["resume", "--config", str(config_path)]) == 0
    assert store.draining_retry_after() is None


def test_drain_wait_fails_while_a_job_is_still_queued(config_path: Path, capsys) -> None:
    store = store_of(config_path)
    store.create(JobRecord(request_id="a" * 32, tenant="t", settings=SETTINGS))
    assert main(["drain", "--config", str(config_path), "--wait", "0.01"]) == 1
    assert "not drained: 1 queued, 0 running" in capsys.readouterr().err
    store.cancel("a" * 32, "t")
    assert main(["drain", "--config", str(config_path), "--wait", "5"]) == 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["drain", "--config", "missing.yaml"], "missing.yaml: no such config file"),
        (["drain", "--retry-after", "0"], "--retry-after must be at least 1 second"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(argv, message, capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_no_redis_is_a_clear_error(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.delenv("INFINITETALK_REDIS_URL", raising=False)
    path = tmp_path / "serve.yaml"
    args = {"redis": {"embedded_port": 6999}}
    path.write_text(yaml.safe_dump({"applications": [{"name": "infinitetalk", "args": args}]}))
    assert main(["drain", "--config", str(path)]) == 2
    assert "no Redis" in capsys.readouterr().err


def test_store_rejects_a_non_positive_retry_after(config_path: Path) -> None:
    with pytest.raises(ValueError, match="must be a positive whole number"):
        store_of(config_path).set_draining(0)


def test_rays_cli_is_found_next_to_the_interpreter(tmp_path: Path, monkeypatch) -> None:
    venv_bin = tmp_path / "venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "serve").write_text("#!/bin/sh\n")
    (venv_bin / "serve").chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(venv_bin / "python"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert ray_serve_cli() == str(venv_bin / "serve")
    (venv_bin / "serve").unlink()
    assert ray_serve_cli() is None


@pytest.fixture()
def readiness_server():
    """A /readyz on 127.0.0.1 that answers 503 twice, then 200."""
    answers = [503, 503, 200]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status = answers.pop(0) if len(answers) > 1 else answers[0]
            body = json.dumps({"ready": status == 200, "deployments": {"Sampler": {"running_replicas": 1}}})
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", answers
    server.shutdown()


def test_wait_ready_returns_once_a_job_can_start(readiness_server, capsys) -> None:
    url, answers = readiness_server
    assert wait_ready(url, timeout=10, poll_seconds=0.01) == 0
    assert answers == [200]
    assert f"ready: a job can start now at {url} (Sampler 1)" in capsys.readouterr().err


def test_wait_ready_gives_up(capsys) -> None:
    assert wait_ready("http://127.0.0.1:9", timeout=0.2, poll_seconds=0.05) == 1
    assert "not ready after" in capsys.readouterr().err
