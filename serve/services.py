"""The composition root: every long-lived part of the app, built once from the app config.

The ingress, the sampler, the CLI and the tests all take their stores, storage, authenticator and job
service from here, so the stack is wired in one place. Tests pass a clock, an environment or storage of
their own; nothing else differs from production.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property

import redis

from serve.api.common import ApiContext
from serve.auth import Authenticator
from serve.config import AppConfig
from serve.inputs.fetcher import Fetcher, FetchPolicy
from serve.inputs.references import InputResolver
from serve.job_service import JobService
from serve.jobs.async_store import AsyncJobStore
from serve.jobs.clock import RedisClock
from serve.jobs.store import JobStore
from serve.metrics import MetricsRecorder
from serve.readiness import ReplicaCounts
from serve.storage import ObjectStore, build_storage
from serve.webhooks import webhook_policy

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
    # Default: Redis's clock (``serve.jobs.clock``), the one every replica's leases and deadlines agree on.
    clock: Callable[[], float] | None = None
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ)

    def __post_init__(self) -> None:
        if self.clock is None:
            self.clock = RedisClock.from_url(self.redis_url)

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
        return JobStore(
            self.redis,
            namespace=self.config.redis.namespace,
            policy=self.config.queue.policy(),
            clock=self.clock,
        )

    @cached_property
    def async_store(self) -> AsyncJobStore:
        return AsyncJobStore.from_url(
            self.redis_url,
            timeout_seconds=REDIS_SOCKET_TIMEOUT_SECONDS,
            namespace=self.config.redis.namespace,
            policy=self.config.queue.policy(),
            clock=self.clock,
        )

    @cached_property
    def storage(self) -> ObjectStore:
        return build_storage(
            self.config.storage,
            public_base_url=self.config.public_base_url,
            environ=self.environ,
            clock=self.clock,
        )

    @cached_property
    def metrics(self) -> MetricsRecorder:
        return MetricsRecorder(self.redis, self.config.redis.namespace)

    @cached_property
    def authenticator(self) -> Authenticator:
        return Authenticator.from_config(self.config.auth, self.environ)

    @cached_property
    def webhook_targets(self) -> Fetcher:
        """The guard webhook targets pass, at submit and at each delivery (``serve.webhooks``)."""
        return Fetcher(webhook_policy(self.config.webhooks))

    @cached_property
    def jobs(self) -> JobService:
        fetch = self.config.fetch
        return JobService(
            self.async_store,
            self.storage,
            InputResolver(Fetcher(FetchPolicy.from_config(fetch)), self.storage),
            limits=fetch,
            url_ttl_seconds=self.config.storage.url_ttl_seconds,
            webhook_targets=self.webhook_targets,
        )

    def api_context(self, replicas: ReplicaCounts | None = None) -> ApiContext:
        """``replicas``: where to read the deployments' readiness from (the Ingress passes Serve's)."""
        return ApiContext(
            config=self.config,
            jobs=self.jobs,
            store=self.async_store,
            sync_store=self.store,
            storage=self.storage,
            authenticator=self.authenticator,
            metrics=self.metrics,
            replicas=replicas,
        )
