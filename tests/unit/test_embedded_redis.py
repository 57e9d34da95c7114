"""The embedded Redis: a real server over TCP whose data survives stops, kills and restarts (AOF)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import pytest

from serve.jobs.embedded_redis import AOF_NAME, CONF_NAME, EmbeddedRedis, EmbeddedRedisError


def test_persists_across_a_clean_restart(tmp_path):
    with EmbeddedRedis(tmp_path) as first:
        assert first.url.startswith("redis://127.0.0.1:")
        conn = first.client()
        conn.set("k", "v")
        conn.hset("h", mapping={"a": "1"})
        conn.close()
        port = first.port
        config = first.client().config_get("append*")
        assert config["appendonly"] == "yes" and config["appendfsync"] == "everysec"
    assert not first.is_running()
    assert (tmp_path / AOF_NAME).exists() or (tmp_path / "appendonlydir").exists()
    with EmbeddedRedis(tmp_path) as second:
        assert second.port == port  # same URL for the workers when the port is still free
        conn = second.client()
        assert conn.get("k") == b"v"
        assert conn.hgetall("h") == {b"a": b"1"}
        conn.close()


def test_survives_a_killed_server(tmp_path):
    server = EmbeddedRedis(tmp_path).start()
    try:
        conn = server.client()
        for i in range(50):
            conn.rpush("jobs", i)
        conn.close()
        os.kill(server.pid, signal.SIGKILL)
        server.stop()  # reaps the dead process, nothing to shut down
        assert not server.is_running()
        server.start()
        conn = server.client()
        assert conn.llen("jobs") == 50
        conn.close()
    finally:
        server.stop()


def test_reachable_by_url_from_another_process(tmp_path):
    with EmbeddedRedis(tmp_path) as server:
        code = "import redis, sys; c = redis.Redis.from_url(sys.argv[1]); c.set('from', 'child')"
        subprocess.run([sys.executable, "-c", code, server.url], check=True, timeout=30)
        assert server.client().get("from") == b"child"


def test_a_second_start_on_the_same_dir_attaches(tmp_path):
    with EmbeddedRedis(tmp_path) as owner:
        owner.client().set("k", "1")
        other = EmbeddedRedis(tmp_path).start()
        assert other.attached and not owner.attached
        assert (other.pid, other.url) == (owner.pid, owner.url)
        assert other.client().get("k") == b"1"
        other.stop()  # stops the shared server
        assert not owner.is_running()


def test_separate_dirs_are_separate_servers(tmp_path):
    with EmbeddedRedis(tmp_path / "a") as a, EmbeddedRedis(tmp_path / "b") as b:
        assert a.port != b.port
        a.client().set("k", "a")
        assert b.client().get("k") is None


def test_explicit_busy_port_fails_with_the_log(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(EmbeddedRedisError, match="could not listen"):
            EmbeddedRedis(tmp_path, port=port).start()


def test_previous_port_taken_falls_back_to_a_free_one(tmp_path):
    with EmbeddedRedis(tmp_path) as server:
        server.client().set("k", "v")
        port = server.port
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the old port may be in TIME_WAIT
        sock.bind(("127.0.0.1", port))
        sock.listen()
        with EmbeddedRedis(tmp_path) as again:
            new_port = again.port
            assert new_port != port
            assert again.client().get("k") == b"v"
    assert f"port {new_port}\n" in (tmp_path / CONF_NAME).read_text()


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="port"):
        EmbeddedRedis(tmp_path, port=70000)
    with pytest.raises(ValueError, match="line breaks"):
        EmbeddedRedis(tmp_path / "bad\ndir")
    with pytest.raises(EmbeddedRedisError, match="not started"):
        _ = EmbeddedRedis(tmp_path).url
    EmbeddedRedis(tmp_path).stop()  # stopping a handle that never started is harmless
