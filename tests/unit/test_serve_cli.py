"""``python -m serve drain|resume`` against a real Redis named by the config."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from serve.__main__ import main
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
