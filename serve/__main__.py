"""``python -m serve up``: the whole local stack (embedded Redis, Ray, the app on 127.0.0.1:8000).

Redis starts here, before Ray and outside it: a process started inside a Ray worker is killed with that
worker, and the job store must outlive every replica. ``serve run`` then starts a local Ray and the app,
finding Redis through ``INFINITETALK_REDIS_URL``. ``python -m serve down`` stops the embedded Redis (its
data stays in the AOF file for the next ``up``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import yaml

from serve.config import AppConfig
from serve.jobs import EmbeddedRedis

DEFAULT_CONFIG = Path("configs/local.yaml")


def _app_config(config_path: Path) -> AppConfig:
    document = yaml.safe_load(config_path.read_text())
    return AppConfig.model_validate(document["applications"][0].get("args", {}))


def _embedded(config: AppConfig) -> EmbeddedRedis:
    return EmbeddedRedis(config.redis.embedded_dir, port=config.redis.embedded_port)


def up(config_path: Path) -> int:
    config = _app_config(config_path)
    env = dict(os.environ)
    if config.redis.resolved_url() is None:
        server = _embedded(config).start()
        env[config.redis.url_env] = server.url
        print(f"embedded Redis: {server.url} (data in {server.data_dir})", file=sys.stderr)
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    serve_cli = shutil.which("serve")
    if serve_cli is None:
        print("error: the 'serve' command of ray[serve] is not on PATH", file=sys.stderr)
        return 2
    os.execve(serve_cli, [serve_cli, "run", str(config_path)], env)
    return 0  # pragma: no cover - execve does not return


def down(config_path: Path) -> int:
    _embedded(_app_config(config_path)).start().stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serve", description=__doc__)
    parser.add_argument("command", choices=["up", "down"])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="Serve config file (YAML)")
    args = parser.parse_args(argv)
    if not args.config.is_file():
        print(f"error: {args.config}: no such config file", file=sys.stderr)
        return 2
    return up(args.config) if args.command == "up" else down(args.config)


if __name__ == "__main__":
    sys.exit(main())
