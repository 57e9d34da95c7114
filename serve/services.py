"""The long-lived clients every deployment builds from the app config: Redis, the job store, storage."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import redis

from serve.config import AppConfig
from serve.jobs import JobStore
from serve.jobs.reader import JobReader
from serve.metrics import MetricsRecorder
from serve.storage import Storage, build_storage

REDIS_SOCKET_TIMEOUT_SECONDS = 5.0


class RedisNotConfigured(RuntimeError):
    """No Redis URL is configured and no embedded server is running."""


def resolve_redis_url(config: AppConfig) -> str:
    """The configured Redis URL, or the running embedded server's (``python -m serve up`` starts it).

    The app never starts Redis itself: a process started inside a Ray worker dies with that worker.
    """
    url = config.redis.resolved_url()
    if url:
        return url
    client = redis.Redis(host="127.0.0.1", port=config.redis.embedded_port, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.RedisError:
        raise RedisNotConfigured(
            f"no Redis: set redis.url or ${config.redis.url_env}, or start the local stack with "
            f"`python -m serve up` (embedded Redis on port {config.redis.embedded_port})"
        ) from None
    return f"redis://127.0.0.1:{config.redis.embedded_port}/0"


@dataclass
class Services:
    config: AppConfig
    redis_url: str

    @cached_property
    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(
            self.redis_url,
            socket_timeout=REDIS_SOCKET_TIMEOUT_SECONDS,
            socket_connect_timeout=REDIS_SOCKET_TIMEOUT_SECONDS,
            health_check_interval=30,
        )

    @cached_property
    def store(self) -> JobStore:
        queue = self.config.queue
        return JobStore(
            self.redis,
            namespace=self.config.redis.namespace,
            lease_seconds=queue.lease_seconds,
            max_attempts=queue.max_attempts,
            retention_seconds=queue.retention_seconds,
            max_queued=queue.max_queued,
        )

    @cached_property
    def storage(self) -> Storage:
        return build_storage(self.config.storage, public_base_url=self.config.public_base_url)

    @cached_property
    def reader(self) -> JobReader:
        return JobReader.from_url(self.store, self.redis_url, timeout_seconds=REDIS_SOCKET_TIMEOUT_SECONDS)

    @cached_property
    def metrics(self) -> MetricsRecorder:
        return MetricsRecorder(self.redis, self.config.redis.namespace)
