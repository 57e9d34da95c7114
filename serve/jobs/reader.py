"""The reads a status poll makes (record, tombstone, queue position), on ``redis.asyncio``.

Polls are most of an API's traffic. Served by sync handlers, each poll waited for a worker thread of the
ingress replica; on Ray Serve that hop halved the status throughput (``bench/serving_overhead``: 103 vs 196
polls/s). These reads are single commands on the keys ``JobStore`` writes, so they run on the event loop
without a thread and without blocking it. Writes stay in ``JobStore`` (Lua scripts, run in threads).

An asyncio Redis connection belongs to the event loop that opened it, so the reader keeps one client per
running loop (a Serve replica has one; test clients start a loop per client).
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable

import redis.asyncio as aioredis

from serve.jobs.records import JobRecord
from serve.jobs.store import JobStore, is_owner, record_of

ClientFactory = Callable[[], aioredis.Redis]


class JobReader:
    def __init__(self, store: JobStore, client_factory: ClientFactory) -> None:
        self._store = store
        self._factory = client_factory
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aioredis.Redis] = (
            weakref.WeakKeyDictionary()
        )

    @classmethod
    def from_url(cls, store: JobStore, url: str, *, timeout_seconds: float) -> JobReader:
        return cls(
            store,
            lambda: aioredis.Redis.from_url(
                url, socket_timeout=timeout_seconds, socket_connect_timeout=timeout_seconds
            ),
        )

    def _client(self) -> aioredis.Redis:
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            client = self._clients[loop] = self._factory()
        return client

    async def get(self, request_id: str, tenant: str) -> JobRecord | None:
        """As ``JobStore.get``: None if absent or another tenant's."""
        return record_of(await self._client().hgetall(self._store.job_key(request_id)), tenant)

    async def is_gone(self, request_id: str, tenant: str) -> bool:
        """As ``JobStore.is_gone``: this tenant's job existed and was deleted after its retention."""
        return is_owner(await self._client().get(self._store.gone_key(request_id)), tenant)

    async def queue_position(self, request_id: str) -> int | None:
        """As ``JobStore.queue_position``: 0-based, None when not queued."""
        return await self._client().zrank(self._store.queue_key, request_id)
