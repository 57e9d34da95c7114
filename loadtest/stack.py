"""A private local stack (``python -m serve up``) on its own ports and directories, for tests and batteries.

Why not the stack of ``configs/local.yaml``: a developer's stack (port 8000, Redis 6399, ``var/``) may be
running, and other test sessions start their own; a battery that kills replicas and restarts Redis must only
ever touch the processes it started. So ``write_config`` derives a config from ``configs/local.yaml`` with
other ports, a scratch directory for Redis and storage, and shorter queue timings (a dead sampler's lease
expires in seconds, not minutes), and ``LocalStack`` starts it in its own process session and finds replica
processes only among its own descendants.

``serve run`` is told ``RAY_ADDRESS=local`` so it always starts a fresh Ray instead of attaching to one that
happens to run on the machine.

CLI, for running the batteries by hand: ``python -m loadtest.stack start DIR`` starts a battery stack
(``battery_settings``) in DIR and returns once it serves, printing its URL and root pid;
``python -m loadtest.stack stop DIR`` stops it.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml

from loadtest.client import ApiClient
from serve.jobs.embedded_redis import EmbeddedRedis

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
BASE_CONFIG = REPO_ROOT / "configs" / "local.yaml"
TOKENS_FILE = REPO_ROOT / "configs" / "local-tokens.yaml"
APP_NAME = "infinitetalk"
DEPLOYMENTS = ("Ingress", "AudioEncoder", "Sampler")
# configs/local-tokens.yaml: two tenants, for isolation checks.
TOKEN = "local-dev-token"
OTHER_TOKEN = "local-dev-token-b"
# The battery stack (``battery_settings``): a small queue bound and small input caps keep the fill-queue and
# oversized-input cases quick; a short lease and sweep bring a dead sampler's job back within seconds.
BATTERY_MAX_QUEUED = 5
BATTERY_MAX_IMAGE_BYTES = 2 * 1024 * 1024
BATTERY_MAX_AUDIO_BYTES = 4 * 1024 * 1024
BATTERY_MAX_VIDEO_BYTES = 4 * 1024 * 1024
BATTERY_MAX_VIDEO_SECONDS = 20
BATTERY_HTTP_PORT = 8300
BATTERY_REDIS_PORT = 6420
# The fixed ports of Serve's HTTP front, by the variable that moves each: Ray's defaults, where the search for
# free ones starts.
FRONT_PORTS = {
    "RAY_SERVE_HAPROXY_STATS_PORT": 8404,
    "RAY_SERVE_HAPROXY_METRICS_PORT": 9101,
    "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": 8500,
}
PID_FILE = "stack.pid"
CONFIG_FILE = "serve.yaml"


class StackError(RuntimeError):
    """The stack did not start, or a process the caller asked for does not exist."""


@dataclass(frozen=True)
class StackSettings:
    """What differs from ``configs/local.yaml``: ports, directories and the queue's timings."""

    workdir: Path
    http_port: int = 8300
    redis_port: int = 6420
    max_queued: int = 50
    lease_seconds: float = 30.0
    maintenance_interval_seconds: float = 5.0
    max_attempts: int = 3
    drain_seconds: float = 600.0
    fetch: dict[str, Any] = field(default_factory=dict)  # FetchConfig fields (byte caps, timeouts)
    webhooks: dict[str, Any] = field(default_factory=dict)  # WebhooksConfig fields (retry timings)
    # More Serve applications to run beside the app in the same Ray (benchmarks add a bare endpoint).
    extra_applications: tuple[dict[str, Any], ...] = ()
    # Set in the stack's environment over the caller's (benchmarks choose the HTTP front with it).
    environment: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_workdir(cls, workdir: Path) -> StackSettings:
        """The settings of the config ``write_config`` left in ``workdir``."""
        document = yaml.safe_load((workdir / CONFIG_FILE).read_text())
        args = document["applications"][0]["args"]
        queue = args["queue"]
        return cls(
            workdir=workdir,
            http_port=document["http_options"]["port"],
            redis_port=args["redis"]["embedded_port"],
            max_queued=queue["max_queued"],
            lease_seconds=queue["lease_seconds"],
            maintenance_interval_seconds=queue["maintenance_interval_seconds"],
            max_attempts=queue["max_attempts"],
            drain_seconds=queue["drain_seconds"],
            fetch=args.get("fetch", {}),
            webhooks=args.get("webhooks", {}),
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def redis_dir(self) -> Path:
        return self.workdir / "redis"

    @property
    def storage_dir(self) -> Path:
        return self.workdir / "storage"

    @property
    def config_path(self) -> Path:
        return self.workdir / CONFIG_FILE


def battery_settings(workdir: Path) -> StackSettings:
    """The stack the e2e tests and batteries run against: free ports from 8300 (HTTP) and 6420 (Redis)."""
    return StackSettings(
        workdir=workdir,
        http_port=free_port(BATTERY_HTTP_PORT),
        redis_port=free_port(BATTERY_REDIS_PORT),
        max_queued=BATTERY_MAX_QUEUED,
        lease_seconds=15.0,
        maintenance_interval_seconds=2.0,
        fetch={
            "max_image_bytes": BATTERY_MAX_IMAGE_BYTES,
            "max_audio_bytes": BATTERY_MAX_AUDIO_BYTES,
            "max_video_bytes": BATTERY_MAX_VIDEO_BYTES,
            "max_video_seconds": BATTERY_MAX_VIDEO_SECONDS,
            "timeout_seconds": 10.0,
        },
        # Retries a second, then up to 4 s apart: a receiver that comes back is served within seconds.
        webhooks={"first_retry_seconds": 1.0, "max_retry_interval_seconds": 4.0},
    )


def write_config(settings: StackSettings, base: Path = BASE_CONFIG) -> Path:
    """The Serve config of ``settings`` (a copy of ``base`` with ports, paths and queue timings replaced)."""
    document = yaml.safe_load(base.read_text())
    document["http_options"] = {**document.get("http_options", {}), "host": "127.0.0.1"}
    document["http_options"]["port"] = settings.http_port
    (app,) = [app for app in document["applications"] if app["name"] == APP_NAME]
    args = app.setdefault("args", {})
    args["redis"] = {
        **args.get("redis", {}),
        "url": None,
        "embedded_dir": str(settings.redis_dir),
        "embedded_port": settings.redis_port,
    }
    args["storage"] = {**args.get("storage", {}), "kind": "local", "root": str(settings.storage_dir)}
    args["auth"] = {"mode": "tokens", "tokens_file": str(TOKENS_FILE)}
    args["queue"] = {
        **args.get("queue", {}),
        "max_queued": settings.max_queued,
        "lease_seconds": settings.lease_seconds,
        "maintenance_interval_seconds": settings.maintenance_interval_seconds,
        "max_attempts": settings.max_attempts,
        "drain_seconds": settings.drain_seconds,
    }
    args["fetch"] = {**args.get("fetch", {}), **settings.fetch}
    args["webhooks"] = {**args.get("webhooks", {}), **settings.webhooks}
    document["applications"].extend(settings.extra_applications)
    settings.workdir.mkdir(parents=True, exist_ok=True)
    settings.config_path.write_text(yaml.safe_dump(document, sort_keys=False))
    return settings.config_path


def _stack_environment(settings: StackSettings) -> dict[str, str]:
    env = dict(os.environ)
    # Inherited settings would point the stack at someone else's Redis or Ray.
    for name in ("INFINITETALK_REDIS_URL", "RAY_ADDRESS", "INFINITETALK_API_TOKENS"):
        env.pop(name, None)
    env["RAY_ADDRESS"] = "local"
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env["INFINITETALK_SIGNING_KEY"] = "e2e-signing-key-not-secret"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    # Serve's HTTP front listens on fixed ports besides the config's (serve/ingress_proxy.py): each stack
    # takes free ones, none of them its own HTTP or Redis port.
    taken = {settings.http_port, settings.redis_port}
    for name, preferred in FRONT_PORTS.items():
        port = free_port(preferred, exclude=taken)
        env[name] = str(port)
        taken.add(port)
    env.update(settings.environment)
    return env


class LocalStack:
    """One ``python -m serve up`` process tree: start, wait until it serves, find its replicas, stop."""

    def __init__(self, settings: StackSettings) -> None:
        self.settings = settings
        self._process: subprocess.Popen[bytes] | None = None
        self._attached_pid: int | None = None
        self._owned = True
        self._log = settings.workdir / "stack.log"

    @classmethod
    def attach(cls, settings: StackSettings, *, take_ownership: bool = False) -> LocalStack:
        """A handle on a stack started earlier with these settings (its pid is in the work directory).

        ``stop`` leaves an attached stack running unless ``take_ownership``: by default whoever started it
        stops it.
        """
        stack = cls(settings)
        try:
            pid = int((settings.workdir / PID_FILE).read_text())
        except (OSError, ValueError):
            raise StackError(f"no stack pid in {settings.workdir / PID_FILE}") from None
        if not psutil.pid_exists(pid):
            raise StackError(f"the stack of {settings.workdir} (pid {pid}) is not running")
        stack._attached_pid = pid
        stack._owned = take_ownership
        return stack

    @property
    def base_url(self) -> str:
        return self.settings.base_url

    @property
    def pid(self) -> int:
        if self._attached_pid is not None:
            return self._attached_pid
        if self._process is None:
            raise StackError("the stack is not started")
        return self._process.pid

    @property
    def log_path(self) -> Path:
        return self._log

    def start(self, timeout: float = 240.0) -> LocalStack:
        config = write_config(self.settings)
        with self._log.open("ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "serve", "up", "--config", str(config)],
                cwd=REPO_ROOT,
                env=_stack_environment(self.settings),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        (self.settings.workdir / PID_FILE).write_text(str(self._process.pid))
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout: float = 240.0) -> float:
        """Seconds until the API answers ``/healthz`` and every replica has finished its constructor."""
        started = time.monotonic()
        deadline = started + timeout
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise StackError(f"the stack exited with {self._process.returncode}; log:\n{self.log_tail()}")
            if self.healthy() and all(self.replica_ready(name) for name in DEPLOYMENTS):
                return time.monotonic() - started
            time.sleep(0.5)
        raise StackError(f"the stack was not ready within {timeout:.0f} s; log:\n{self.log_tail()}")

    def wait_idle(self, timeout: float = 240.0) -> None:
        """Ready (a replica killed earlier has been replaced) and no job queued or running."""
        deadline = time.monotonic() + timeout
        self.wait_ready(timeout)
        with ApiClient(self.base_url, None) as client:
            while time.monotonic() < deadline:
                try:
                    busy = client.metric("infinitetalk_queue_depth") + client.metric(
                        "infinitetalk_jobs_in_progress"
                    )
                except (httpx.HTTPError, KeyError):
                    busy = -1.0
                if busy == 0:
                    return
                time.sleep(1.0)
        raise StackError(f"the stack did not become idle within {timeout:.0f} s")

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.base_url}/healthz", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    def replica_processes(self, deployment: str) -> list[psutil.Process]:
        """Live replica processes of ``deployment`` among this stack's descendants."""
        return find_replicas(deployment, root_pid=self.pid)

    def replica_ready(self, deployment: str) -> bool:
        """A replica exists whose actor constructor has returned (Ray retitles the process then)."""
        return any(is_constructed(process) for process in self.replica_processes(deployment))

    def stop(self, timeout: float = 60.0) -> None:
        """Ctrl-C the stack (Serve and Ray shut down), kill what outlived it, then stop the embedded Redis.

        Redis is a child of the stack's process too; it is shut down cleanly last (never killed), so its AOF
        is complete for the next start.
        """
        if not self._owned:
            return
        process, self._process = self._process, None
        pid = process.pid if process is not None else self._attached_pid
        try:
            self._stop_tree(pid, timeout)
            if process is not None:
                process.wait(10)
        finally:
            self.stop_redis()

    @staticmethod
    def _stop_tree(pid: int | None, timeout: float) -> None:
        try:
            root = psutil.Process(pid) if pid is not None else None
        except psutil.NoSuchProcess:
            return
        if root is None or not root.is_running():
            return
        leftovers = [p for p in _descendants(root.pid) if "redis-server" not in _name(p)]
        root.send_signal(signal.SIGINT)
        try:
            root.wait(timeout)
        except psutil.TimeoutExpired:
            logger.warning("the stack ignored SIGINT for %.0f s; killing its processes", timeout)
            leftovers.append(root)
        _kill_all(leftovers)

    def stop_redis(self) -> None:
        EmbeddedRedis(self.settings.redis_dir, port=self.settings.redis_port).start().stop()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self._log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def free_port(preferred: int, span: int = 100, exclude: Collection[int] = ()) -> int:
    """The first port in ``preferred .. preferred + span``, not in ``exclude``, that nothing listens on at
    127.0.0.1."""
    for port in range(preferred, preferred + span):
        if port in exclude:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise StackError(f"no free port in {preferred}..{preferred + span - 1}")


def find_replicas(
    deployment: str, *, root_pid: int | None = None, app: str = APP_NAME
) -> list[psutil.Process]:
    """Replica processes of ``app``'s ``deployment``: descendants of ``root_pid``, or any on the machine.

    Ray titles a replica's worker process ``ray::ServeReplica:<app>:<deployment>``, with the method it runs
    appended while it runs one (``.__init__`` while the constructor runs, ``.handle_request...``) and a
    longer prefix during construction.
    """
    title_pattern = re.compile(rf"ServeReplica:{re.escape(app)}:{re.escape(deployment)}(\.\w+)?$")
    candidates = _descendants(root_pid) if root_pid is not None else list(psutil.process_iter())
    found = []
    for process in candidates:
        try:
            title = _title(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if title_pattern.search(title):
            found.append(process)
    return found


def _name(process: psutil.Process) -> str:
    try:
        return _title(process)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return ""


def is_constructed(process: psutil.Process) -> bool:
    """The replica's actor constructor has returned (Ray retitles the process then)."""
    try:
        return not _title(process).endswith(".__init__")
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def _title(process: psutil.Process) -> str:
    return " ".join(process.cmdline()).strip()


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _kill_all(processes: list[psutil.Process]) -> None:
    for process in processes:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(processes, timeout=10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.stack", description="A battery stack.")
    parser.add_argument("command", choices=["start", "stop"])
    parser.add_argument("workdir", type=Path, help="scratch directory of the stack (config, Redis, storage)")
    args = parser.parse_args(argv)
    workdir = args.workdir.resolve()
    if args.command == "stop":
        LocalStack.attach(StackSettings.from_workdir(workdir), take_ownership=True).stop()
        return 0
    stack = LocalStack(battery_settings(workdir)).start()
    print(f"serving {stack.base_url} (root pid {stack.pid}, config {stack.settings.config_path})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
