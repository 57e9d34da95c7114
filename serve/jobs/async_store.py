"""The job store on ``redis.asyncio``: what the HTTP API calls, on its event loop, without a worker thread.

Status polls are most of an API's traffic; served by sync handlers each poll waited for a worker thread of
the ingress replica, which on Ray Serve halved the status throughput (``bench/serving_overhead``). Here the
reads are single commands and the writes are the same Lua script calls ``JobStore`` runs
(``serve.jobs.operations``), awaited.

An asyncio Redis connection belongs to the event loop that opened it, so the store keeps one client (and its
registered scripts) per running loop: a Serve replica has one; test clients start a loop per client.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import WatchError

from serve.jobs import operations
from serve.jobs.errors import IdempotencyConflict
from serve.jobs.keys import Keys
from serve.jobs.operations import CancelOutcome, QueuePolicy, record_of
from serve.jobs.records import JobRecord, JobStatus, record_at
from serve.jobs.webhook_secrets import WebhookSecrets

T = TypeVar("T")
ClientFactory = Callable[[], aioredis.Redis]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@dataclass(frozen=True)
class Admission:
    """Whether a submit may go on, read before its inputs are fetched (``create`` decides for good)."""

    draining_retry_after: int | None
    queue_full: bool
    tenant_queued: int
    tenant_cap: int

    @property
    def tenant_full(self) -> bool:
        return self.tenant_queued >= self.tenant_cap


class _LoopClient:
    def __init__(self, client: aioredis.Redis) -> None:
        self.redis = client
        self.scripts = {
            name: client.register_script(operations.script_source(name)) for name in operations.SCRIPTS
        }


class AsyncJobStore:
    def __init__(
        self,
        client_factory: ClientFactory,
        *,
        namespace: str = "infinitetalk",
        policy: QueuePolicy | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._factory = client_factory
        self.keys = Keys(namespace)
        self.policy = policy or QueuePolicy()
        self._clock = clock
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopClient] = (
            weakref.WeakKeyDictionary()
        )

    @classmethod
    def from_url(cls, url: str, *, timeout_seconds: float, **kwargs: Any) -> AsyncJobStore:
        def connect() -> aioredis.Redis:
            return aioredis.Redis.from_url(
                url, socket_timeout=timeout_seconds, socket_connect_timeout=timeout_seconds
            )

        return cls(connect, **kwargs)

    def now(self) -> float:
        return self._clock()

    def _client(self) -> _LoopClient:
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            client = self._clients[loop] = _LoopClient(self._factory())
        return client

    async def _run(self, call: operations.Call[T]) -> T:
        return call.read(await self._client().scripts[call.script](args=call.args))

    # -- reads ----------------------------------------------------------------------------------------------

    async def get(self, request_id: str, tenant: str) -> JobRecord | None:
        """None if absent or another tenant's."""
        return record_of(await self._client().redis.hgetall(self.keys.job(request_id)), tenant)

    async def is_gone(self, request_id: str, tenant: str) -> bool:
        """This tenant's job existed and was deleted after its retention (the API answers 410)."""
        owner = await self._client().redis.get(self.keys.gone(request_id))
        return owner is not None and _text(owner) == tenant

    async def queue_position(self, record: JobRecord) -> int | None:
        """0-based, about how many queued jobs start before this one (fair turns across tenants)."""
        if record.status is not JobStatus.IN_QUEUE:
            return None
        return await self._run(operations.queue_position(self.keys, record.request_id, record.tenant))

    async def changes(
        self, request_id: str, tenant: str, after: str | None, limit: int = 100
    ) -> tuple[dict[str, str], list[tuple[str, dict[str, str]]]] | None:
        """One round trip: the job's hash as stored, and the entries of its event stream after ``after``
        (a stream id; None: only the newest entry, the state now). None if absent or another tenant's."""
        pipe = self._client().redis.pipeline(transaction=False)
        pipe.hgetall(self.keys.job(request_id))
        if after is None:
            pipe.xrevrange(self.keys.events(request_id), count=1)
        else:
            pipe.xrange(self.keys.events(request_id), min=f"({after}", count=limit)
        raw, entries = await pipe.execute()
        stored = {_text(key): _text(value) for key, value in raw.items()}
        if not stored or stored.get("tenant") != tenant:
            return None
        return stored, [
            (_text(event_id), {_text(k): _text(v) for k, v in fields.items()}) for event_id, fields in entries
        ]

    async def lookup_idempotent(self, tenant: str, idempotency_key: str, body_hash: str) -> JobRecord | None:
        """The job an earlier submit with this key made, before the inputs are fetched and staged; a shortcut
        (``create`` makes the binding decision atomically). ``IdempotencyConflict`` for another body."""
        redis = self._client().redis
        entry = await redis.hmget(self.keys.idempotency(tenant, idempotency_key), ["request_id", "body_hash"])
        if entry[0] is None:
            return None
        existing = await self.get(_text(entry[0]), tenant)
        if existing is None:
            return None
        if _text(entry[1]) != body_hash:
            raise IdempotencyConflict(existing.request_id)
        return existing

    async def admission(self, tenant: str) -> Admission:
        """One round trip: draining, the whole queue's bound, the tenant's queued jobs against its cap."""
        pipe = self._client().redis.pipeline(transaction=False)
        pipe.get(self.keys.draining)
        pipe.hget(self.keys.counts, JobStatus.IN_QUEUE.value)
        pipe.hget(self.keys.usage(tenant), "queued")
        pipe.hget(self.keys.limits, tenant)
        draining, queued, tenant_queued, limits = await pipe.execute()
        cap = self.policy.tenant_max_queued
        if limits is not None:
            own = int(_text(limits).split(",")[0])
            cap = own if own >= 0 else cap
        bound = self.policy.max_queued
        return Admission(
            draining_retry_after=None if draining is None else int(draining),
            queue_full=bound is not None and int(queued or 0) >= bound,
            tenant_queued=int(tenant_queued or 0),
            tenant_cap=cap,
        )

    async def draining_retry_after(self) -> int | None:
        value = await self._client().redis.get(self.keys.draining)
        return None if value is None else int(value)

    async def counts(self) -> dict[JobStatus, int]:
        raw = {_text(k): int(v) for k, v in (await self._client().redis.hgetall(self.keys.counts)).items()}
        return {status: raw.get(status.value, 0) for status in JobStatus}

    async def ping(self) -> bool:
        try:
            return bool(await self._client().redis.ping())
        except aioredis.RedisError:
            return False

    # -- writes ---------------------------------------------------------------------------------------------

    async def create(
        self, record: JobRecord, idempotency_key: str | None = None, body_hash: str | None = None
    ) -> tuple[JobRecord, bool]:
        return await self._run(
            operations.create(self.keys, self.policy, record, self._clock(), idempotency_key, body_hash)
        )

    async def cancel(self, request_id: str, tenant: str) -> CancelOutcome:
        return await self._run(operations.cancel(self.keys, self.policy, request_id, tenant, self._clock()))

    async def reserve_upload(self, tenant: str, file_id: str, size_bytes: int) -> float:
        """Count an upload against its tenant's quota (``UploadQuotaExceeded``); when it expires."""
        expires_at = self._clock() + self.policy.retention_seconds
        await self._run(
            operations.reserve_upload(self.keys, self.policy, tenant, file_id, size_bytes, expires_at)
        )
        return expires_at

    async def forget_upload(self, tenant: str, file_id: str) -> None:
        await self._run(operations.forget_upload(self.keys, tenant, file_id))

    # -- webhooks -------------------------------------------------------------------------------------------

    async def claim_deliveries(self, lease_seconds: float, limit: int) -> list[operations.Delivery]:
        return await self._run(operations.claim_deliveries(self.keys, self._clock(), lease_seconds, limit))

    async def delivery_done(
        self, delivery: operations.Delivery, outcome: str, next_at: float | None = None, error: str = ""
    ) -> None:
        await self._run(operations.delivery_done(self.keys, delivery, outcome, next_at, error))

    async def job_at_event(self, request_id: str, event_id: str) -> JobRecord | None:
        """The job as its event ``event_id`` left it (the record now where the stream no longer holds it);
        None once the job is deleted."""
        pipe = self._client().redis.pipeline(transaction=False)
        pipe.hgetall(self.keys.job(request_id))
        pipe.xrange(self.keys.events(request_id), min=event_id, max=event_id)
        raw, entries = await pipe.execute()
        if not raw:
            return None
        stored = {_text(key): _text(value) for key, value in raw.items()}
        change = {_text(k): _text(v) for k, v in entries[0][1].items()} if entries else {}
        return record_at(stored, change) if change else JobRecord.from_redis_hash(stored)

    async def webhook_secrets(self, tenant: str) -> WebhookSecrets:
        """The tenant's signing secrets, made on first use."""
        redis = self._client().redis
        await redis.hsetnx(self.keys.webhook_secrets, tenant, WebhookSecrets.new().to_json())
        return WebhookSecrets.from_json(_text(await redis.hget(self.keys.webhook_secrets, tenant)))

    async def rotate_webhook_secret(self, tenant: str) -> WebhookSecrets:
        """A new current secret; the old one keeps signing alongside for ``ROTATION_GRACE_SECONDS``. Two
        rotations at once (two replicas) both take effect, one after the other: neither secret handed out
        is lost."""
        await self.webhook_secrets(tenant)
        async with self._client().redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(self.keys.webhook_secrets)
                    stored = WebhookSecrets.from_json(
                        _text(await pipe.hget(self.keys.webhook_secrets, tenant))
                    )
                    rotated = stored.rotated(self._clock())
                    pipe.multi()
                    pipe.hset(self.keys.webhook_secrets, tenant, rotated.to_json())
                    await pipe.execute()
                    return rotated
                except WatchError:
                    continue  # another rotation (of any tenant) landed in between: read again

    async def count(self, metric: str, label: str = "") -> None:
        """Add one to a counter of ``serve.metrics`` (the store's scripts count submits and endings)."""
        await self._client().redis.hincrby(self.keys.metric_counter(metric), label, 1)
