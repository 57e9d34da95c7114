"""``python -m serve up``: the whole local stack (embedded Redis, Ray, the app on 127.0.0.1:8000).

Redis starts here, before Ray and outside it: a process started inside a Ray worker is killed with that
worker, and the job store must outlive every replica. ``serve run`` then starts a local Ray and the app,
finding Redis through ``INFINITETALK_REDIS_URL``. ``python -m serve down`` stops the embedded Redis (its
data stays in the AOF file for the next ``up``). The HTTP front is HAProxy when its binary is installed
(``serve.ingress_proxy``).

``python -m serve drain`` makes every ingress refuse new jobs with 503 + Retry-After while the queued and
running ones finish (``--wait`` waits for that), before an upgrade or a shutdown; ``python -m serve resume``
admits jobs again. Both work against any deployment whose Redis the config names. ``python -m serve
wait-ready`` returns once ``/readyz`` says a job can start (``up`` prints "ready" that way). ``python -m
serve submit`` sends a job to a running server and downloads its video (``serve.client.cli``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml

from serve.config import AppConfig
from serve.ingress_proxy import HAPROXY_SWITCH, HAProxyMissing, ingress_environment, uses_haproxy
from serve.jobs.embedded_redis import EmbeddedRedis
from serve.jobs.records import JobStatus
from serve.jobs.store import JobStore
from serve.services import RedisNotConfigured, Services, resolve_redis_url

DEFAULT_CONFIG = Path("configs/local.yaml")
LOCAL_DRAIN_SECONDS = 5


def _app_config(config_path: Path) -> AppConfig:
    document = yaml.safe_load(config_path.read_text())
    return AppConfig.model_validate(document["applications"][0].get("args", {}))


def _embedded(config: AppConfig) -> EmbeddedRedis:
    return EmbeddedRedis(config.redis.embedded_dir, port=config.redis.embedded_port)


def ray_serve_cli() -> str | None:
    """Ray's ``serve`` command: the one installed next to this interpreter (a venv need not be activated),
    else the one on PATH."""
    beside = Path(sys.executable).parent / "serve"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("serve")


def _base_url(config_path: Path) -> str:
    http = yaml.safe_load(config_path.read_text()).get("http_options") or {}
    host = http.get("host", "127.0.0.1")
    return f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{http.get('port', 8000)}"


def wait_ready(base_url: str, timeout: float, parent: int | None = None, poll_seconds: float = 1.0) -> int:
    """Poll ``/readyz`` until a job can start (exit 0), ``timeout`` passes (1) or ``parent`` exits (1)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if parent is not None and os.getppid() != parent:
            return 1
        try:
            response = httpx.get(f"{base_url}/readyz", timeout=5.0)
        except httpx.HTTPError:
            response = None
        if response is not None and response.status_code == 200:
            deployments = response.json().get("deployments") or {}
            replicas = ", ".join(f"{name} {d['running_replicas']}" for name, d in deployments.items())
            print(f"ready: a job can start now at {base_url} ({replicas})", file=sys.stderr, flush=True)
            return 0
        time.sleep(poll_seconds)
    print(f"not ready after {timeout:.0f} s: {base_url}/readyz", file=sys.stderr)
    return 1


def up(config_path: Path) -> int:
    config = _app_config(config_path)
    serve_cli = ray_serve_cli()
    if serve_cli is None:
        print(
            f"error: Ray's 'serve' command is neither next to {sys.executable} nor on PATH "
            "(pip install -e . installs ray[serve])",
            file=sys.stderr,
        )
        return 2
    try:
        env = ingress_environment(os.environ)
    except HAProxyMissing as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    front = "HAProxy" if uses_haproxy(env) else "Serve's proxy actor"
    print(f"HTTP front: {front} ({HAPROXY_SWITCH}={env[HAPROXY_SWITCH]})", file=sys.stderr)
    if config.redis.resolved_url() is None:
        server = _embedded(config).start()
        env[config.redis.url_env] = server.url
        print(f"embedded Redis: {server.url} (data in {server.data_dir})", file=sys.stderr)
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Behind HAProxy, Ray keeps a stopping ingress replica serving 30 s so that load balancers outside the
    # cluster can drop it first; on one machine only Serve's own HAProxy routes to it, and Serve updates it.
    env.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", str(LOCAL_DRAIN_SECONDS))
    # A watcher prints "ready" once a job can start; it is this process's child, so after the exec below it
    # waits on `serve run` and gives up when that exits.
    watcher = [sys.executable, "-m", "serve", "wait-ready", "--config", str(config_path)]
    subprocess.Popen([*watcher, "--parent", str(os.getpid())], stdin=subprocess.DEVNULL)
    os.execve(serve_cli, [serve_cli, "run", str(config_path)], env)
    return 0  # pragma: no cover - execve does not return


def down(config_path: Path) -> int:
    _embedded(_app_config(config_path)).start().stop()
    return 0


def _store(config_path: Path) -> JobStore:
    config = _app_config(config_path)
    return Services(config, resolve_redis_url(config)).store


def drain(config_path: Path, retry_after: int, wait_seconds: float, poll_seconds: float = 2.0) -> int:
    """Refuse new jobs; with ``wait_seconds``, wait until no job is queued or running (exit 1 if not)."""
    store = _store(config_path)
    store.set_draining(retry_after)
    print(f"draining: new jobs get 503 with Retry-After {retry_after}", file=sys.stderr)
    deadline = time.monotonic() + wait_seconds
    while True:
        counts = store.counts()
        queued, running = counts[JobStatus.IN_QUEUE], counts[JobStatus.IN_PROGRESS]
        if queued + running == 0:
            print("drained: no job queued or running", file=sys.stderr)
            return 0
        if time.monotonic() >= deadline:
            if wait_seconds > 0:
                print(f"not drained: {queued} queued, {running} running", file=sys.stderr)
            return 1 if wait_seconds > 0 else 0
        print(f"waiting: {queued} queued, {running} running", file=sys.stderr)
        time.sleep(poll_seconds)


def resume(config_path: Path) -> int:
    _store(config_path).set_draining(None)
    print("accepting jobs", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["submit"]:
        from serve.client.cli import main as submit

        return submit(argv[1:])
    parser = argparse.ArgumentParser(
        prog="python -m serve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=["up", "down", "drain", "resume", "wait-ready"])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="Serve config file (YAML)")
    parser.add_argument(
        "--retry-after", type=int, default=60, help="drain: the Retry-After (seconds) refused clients get"
    )
    parser.add_argument(
        "--wait", type=float, default=0.0, help="drain: wait up to this many seconds for the queue to empty"
    )
    parser.add_argument(
        "--timeout", type=float, default=900.0, help="wait-ready: give up after this many seconds (exit 1)"
    )
    parser.add_argument("--parent", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.config.is_file():
        print(f"error: {args.config}: no such config file", file=sys.stderr)
        return 2
    if args.retry_after < 1:
        print("error: --retry-after must be at least 1 second", file=sys.stderr)
        return 2
    try:
        if args.command == "drain":
            return drain(args.config, args.retry_after, args.wait)
        if args.command == "resume":
            return resume(args.config)
        if args.command == "wait-ready":
            return wait_ready(_base_url(args.config), args.timeout, args.parent)
    except RedisNotConfigured as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return up(args.config) if args.command == "up" else down(args.config)


if __name__ == "__main__":
    sys.exit(main())
