"""The unit suite's one Redis: a real server (the embedded one), started once per session, each test getting
it empty."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from serve.jobs.embedded_redis import EmbeddedRedis


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(tmp_path_factory.mktemp("redis")) as embedded:
        yield embedded


@pytest.fixture
def redis_conn(redis_server: EmbeddedRedis) -> Iterator[redis.Redis]:
    """No retries and short timeouts, so a dead server is noticed at once; flushed before each test."""
    client = redis.Redis.from_url(
        redis_server.url, socket_timeout=5.0, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0)
    )
    client.flushall()
    yield client
    client.close()
