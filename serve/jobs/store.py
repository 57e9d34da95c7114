"""The durable job store: job records, the queue order, leases and retention in Redis.

Why it exists: the queue transport (Celery over Redis) delivers messages at least once and its own task
state cannot be trusted, so every decision about a job -- may it run, who runs it, is it finished -- is taken
here, atomically, in a Lua script. Two executors of one job (a redelivered message while the first still
runs) race on ``claim``: exactly one wins. Only the lease owner may complete or fail a job, so a client
never sees a duplicate output.

Keys (``{ns}`` is a Redis Cluster hash tag, so every key of one namespace lives in one slot and the
multi-key scripts stay legal on a cluster)::

    {ns}:job:<id>      hash: the record (``JobRecord.to_redis_hash``) plus ``_seq`` and ``_releases``
    {ns}:queue         zset id -> enqueue sequence (INCR of {ns}:seq): order and queue_position
    {ns}:leases        zset id -> lease expiry: in-progress jobs, so the reaper is O(expired)
    {ns}:expiry        zset id -> expires_at: terminal jobs, for the retention sweep
    {ns}:counts        hash status -> number of jobs: cheap metrics
    {ns}:idem:<digest> hash request_id, body_hash (expires): idempotency keys, per tenant
    {ns}:gone:<id>     string tenant (expires): a tombstone so the API can answer 410 after deletion

Attempts: ``attempt`` counts claims. A lease that expires (the worker died or hung) used up its attempt;
after ``max_attempts`` the job fails with ``retries_exhausted``. A graceful ``release`` (shutdown, drain)
gives the attempt back, but only ``max_releases`` times, so a job that keeps a replica from shutting down
cleanly still ends.

Time comes from the injected ``clock`` and every timestamp is computed in Python and handed to the scripts
as a string, so the scripts are deterministic and tests control time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import redis

from serve.jobs.records import DEFAULT_MAX_ATTEMPTS, RETRIES_EXHAUSTED, JobError, JobRecord, JobStatus

logger = logging.getLogger(__name__)

DAY = 24 * 3600.0

# Shared by every script. KEYS[1..4] are the same in all of them.
_PRELUDE = """
local QUEUE, LEASES, EXPIRY, COUNTS = KEYS[1], KEYS[2], KEYS[3], KEYS[4]

local function move(old, new)
  redis.call('HINCRBY', COUNTS, old, -1)
  redis.call('HINCRBY', COUNTS, new, 1)
end

local function finish(job, id, old, new, now, expires_at)
  redis.call('HSET', job, 'status', new, 'finished_at', now, 'updated_at', now, 'expires_at', expires_at)
  redis.call('HDEL', job, 'lease_expires_at', 'eta_seconds')
  redis.call('ZREM', QUEUE, id)
  redis.call('ZREM', LEASES, id)
  redis.call('ZADD', EXPIRY, expires_at, id)
  move(old, new)
end

local function requeue(job, id, old, now)
  redis.call('HSET', job, 'status', 'in_queue', 'updated_at', now, 'progress', '0.0')
  redis.call('HDEL', job, 'lease_owner', 'lease_expires_at', 'started_at', 'eta_seconds')
  redis.call('ZREM', LEASES, id)
  redis.call('ZADD', QUEUE, redis.call('HGET', job, '_seq'), id)
  move(old, 'in_queue')
end

local function attempts_left(job)
  return tonumber(redis.call('HGET', job, 'attempt')) < tonumber(redis.call('HGET', job, 'max_attempts'))
end
"""

# KEYS[5] job, KEYS[6] seq, KEYS[7] idempotency entry.
# ARGV: id, max_queued (-1: unbounded), use_idem, body_hash, idem_ttl_ms, job key prefix, field/value...
_CREATE = """
local JOB, SEQ, IDEM = KEYS[5], KEYS[6], KEYS[7]
local id, max_queued, use_idem, body_hash = ARGV[1], tonumber(ARGV[2]), ARGV[3] == '1', ARGV[4]
if use_idem then
  local prev = redis.call('HMGET', IDEM, 'request_id', 'body_hash')
  if prev[1] then
    local prev_job = ARGV[6] .. prev[1]
    -- An entry whose record was already deleted (retention) no longer binds the key.
    if redis.call('EXISTS', prev_job) == 1 then
      if prev[2] == body_hash then return {'existing', redis.call('HGETALL', prev_job)} end
      return {'conflict', prev[1]}
    end
  end
end
if redis.call('EXISTS', JOB) == 1 then return {'duplicate'} end
if max_queued >= 0 and redis.call('ZCARD', QUEUE) >= max_queued then return {'full'} end
local seq = redis.call('INCR', SEQ)
redis.call('HSET', JOB, unpack(ARGV, 7))
redis.call('HSET', JOB, '_seq', seq, '_releases', 0)
redis.call('ZADD', QUEUE, seq, id)
redis.call('HINCRBY', COUNTS, 'in_queue', 1)
if use_idem then
  redis.call('HSET', IDEM, 'request_id', id, 'body_hash', body_hash)
  redis.call('PEXPIRE', IDEM, ARGV[5])
end
return {'created', redis.call('HGETALL', JOB)}
"""

# KEYS[5] job. ARGV: id, tenant, now, expires_at.
_CANCEL = """
local JOB = KEYS[5]
local id, tenant, now = ARGV[1], ARGV[2], ARGV[3]
local status = redis.call('HGET', JOB, 'status')
if not status or redis.call('HGET', JOB, 'tenant') ~= tenant then return {'missing'} end
if status == 'cancelled' then return {'cancelled', redis.call('HGETALL', JOB)} end
if status ~= 'in_queue' then return {'conflict', redis.call('HGETALL', JOB)} end
redis.call('HSET', JOB, 'cancel_requested', '1')
finish(JOB, id, status, 'cancelled', now, ARGV[4])
return {'cancelled', redis.call('HGETALL', JOB)}
"""

# Takes one job for an attempt: 'claimed', or why not ('missing', 'leased', 'exhausted', its status).
_TRY_CLAIM = """
local function try_claim(job, id, worker, now, lease, expires_at, exhausted_error)
  local status = redis.call('HGET', job, 'status')
  if not status then return 'missing' end
  if status == 'in_progress' then
    local lease_end = tonumber(redis.call('HGET', job, 'lease_expires_at'))
    if lease_end and lease_end > tonumber(now) then return 'leased' end
  elseif status ~= 'in_queue' then
    return status
  end
  if not attempts_left(job) then
    redis.call('HSET', job, 'error', exhausted_error)
    redis.call('HDEL', job, 'lease_owner')
    finish(job, id, status, 'failed', now, expires_at)
    return 'exhausted'
  end
  redis.call('HINCRBY', job, 'attempt', 1)
  redis.call('HSET', job, 'status', 'in_progress', 'lease_owner', worker, 'lease_expires_at', lease,
    'started_at', now, 'updated_at', now, 'progress', '0.0')
  redis.call('HDEL', job, 'eta_seconds')
  redis.call('ZREM', QUEUE, id)
  redis.call('ZADD', LEASES, lease, id)
  if status ~= 'in_progress' then move(status, 'in_progress') end
  return 'claimed'
end
"""

# KEYS[5] job. ARGV: id, worker, now, lease_expires_at, expires_at (if it fails), error json (if it fails).
_CLAIM = """
local outcome = try_claim(KEYS[5], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6])
if outcome == 'claimed' then return {'claimed', redis.call('HGETALL', KEYS[5])} end
return {outcome}
"""

# A delivery takes the oldest queued job, whichever id its message names: a job requeued after its sampler
# died keeps its place (its first queue position) instead of waiting behind the messages published since.
# Every queued job has at least one message, so each message taking one job leaves none without. With the
# queue empty, the named job itself is tried (a lapsed lease the reaper has not requeued yet).
# KEYS[5] the named job. ARGV: as _CLAIM, then the job key prefix.
_CLAIM_NEXT = """
local worker, now, lease, expires_at, err, prefix = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
while true do
  local head = redis.call('ZRANGE', QUEUE, 0, 0)[1]
  if not head then break end
  local outcome = try_claim(prefix .. head, head, worker, now, lease, expires_at, err)
  if outcome == 'claimed' then return {'claimed', redis.call('HGETALL', prefix .. head)} end
  -- 'exhausted' removed the head from the queue; anything else is a record out of step with the queue.
  if outcome ~= 'exhausted' then break end
end
local outcome = try_claim(KEYS[5], ARGV[1], worker, now, lease, expires_at, err)
if outcome == 'claimed' then return {'claimed', redis.call('HGETALL', KEYS[5])} end
return {outcome}
"""

# KEYS[5] job. ARGV: id, worker, now, lease_expires_at, progress ('' = unchanged), eta ('' = unchanged).
_HEARTBEAT = """
local JOB = KEYS[5]
local id, worker, now, lease = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if redis.call('HGET', JOB, 'status') ~= 'in_progress' or redis.call('HGET', JOB, 'lease_owner') ~= worker then
  return 0
end
redis.call('HSET', JOB, 'lease_expires_at', lease, 'updated_at', now)
if ARGV[5] ~= '' then redis.call('HSET', JOB, 'progress', ARGV[5]) end
if ARGV[6] ~= '' then redis.call('HSET', JOB, 'eta_seconds', ARGV[6]) end
redis.call('ZADD', LEASES, lease, id)
return 1
"""

# KEYS[5] job. ARGV: id, worker, now, expires_at, new status, field/value pairs to set (the first pair is the
# result: output or error).
_FINISH = """
local JOB = KEYS[5]
local id, worker, now = ARGV[1], ARGV[2], ARGV[3]
local status = redis.call('HGET', JOB, 'status')
if redis.call('HGET', JOB, 'lease_owner') ~= worker then return 0 end
-- The same call again (its first reply was lost): already done, and done by this worker.
if status == ARGV[5] and redis.call('HGET', JOB, ARGV[6]) == ARGV[7] then return 1 end
if status ~= 'in_progress' then return 0 end
redis.call('HSET', JOB, unpack(ARGV, 6))
finish(JOB, id, 'in_progress', ARGV[5], now, ARGV[4])
return 1
"""

# KEYS[5] job. ARGV: id, worker, now, max_releases.
_RELEASE = """
local JOB = KEYS[5]
local id, worker, now = ARGV[1], ARGV[2], ARGV[3]
if redis.call('HGET', JOB, 'status') ~= 'in_progress' or redis.call('HGET', JOB, 'lease_owner') ~= worker then
  return 0
end
if redis.call('HINCRBY', JOB, '_releases', 1) <= tonumber(ARGV[4]) then
  redis.call('HINCRBY', JOB, 'attempt', -1)
end
requeue(JOB, id, 'in_progress', now)
return 1
"""

# ARGV: job key prefix, now, limit, expires_at (if failed), error json (if failed).
_REAP = """
local prefix, now, expires_at, err = ARGV[1], ARGV[2], ARGV[4], ARGV[5]
local requeued, failed = {}, {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', LEASES, '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))) do
  local job = prefix .. id
  if redis.call('HGET', job, 'status') ~= 'in_progress' then
    redis.call('ZREM', LEASES, id)
  elseif attempts_left(job) then
    requeue(job, id, 'in_progress', now)
    requeued[#requeued + 1] = id
  else
    redis.call('HSET', job, 'error', err)
    redis.call('HDEL', job, 'lease_owner')
    finish(job, id, 'in_progress', 'failed', now, expires_at)
    failed[#failed + 1] = id
  end
end
return {requeued, failed}
"""

# KEYS[5] job, KEYS[6] tombstone, KEYS[7] idempotency entry. ARGV: id, tombstone ttl ms.
_DELETE = """
local JOB, TOMB, IDEM = KEYS[5], KEYS[6], KEYS[7]
local id = ARGV[1]
local status = redis.call('HGET', JOB, 'status')
if status ~= 'completed' and status ~= 'failed' and status ~= 'cancelled' then return 0 end
redis.call('SET', TOMB, redis.call('HGET', JOB, 'tenant'), 'PX', ARGV[2])
redis.call('DEL', JOB)
redis.call('ZREM', QUEUE, id)
redis.call('ZREM', LEASES, id)
redis.call('ZREM', EXPIRY, id)
redis.call('HINCRBY', COUNTS, status, -1)
if redis.call('HGET', IDEM, 'request_id') == id then redis.call('DEL', IDEM) end
return 1
"""


def record_of(data: Mapping[bytes | str, bytes | str], tenant: str | None) -> JobRecord | None:
    """The record in a job hash, or None if absent or owned by another tenant (``tenant=None``: any)."""
    if not data:
        return None
    record = JobRecord.from_redis_hash(data)
    return None if tenant is not None and record.tenant != tenant else record


def is_owner(owner: bytes | str | None, tenant: str) -> bool:
    return owner is not None and _text(owner) == tenant


class JobStoreError(Exception):
    """Base class of the store's refusals."""


class JobNotFound(JobStoreError):
    """No such job for this tenant (the API answers 404 for both, never revealing the id exists)."""


class IdempotencyConflict(JobStoreError):
    """The idempotency key was used before with a different body (409)."""

    def __init__(self, request_id: str) -> None:
        super().__init__(f"the idempotency key was already used for request {request_id} with another body")
        self.request_id = request_id


class QueueFull(JobStoreError):
    """The queue holds ``max_queued`` jobs already (429)."""


class CancelConflict(JobStoreError):
    """Only a queued job can be cancelled (409 with the current state)."""

    def __init__(self, record: JobRecord) -> None:
        super().__init__(f"job {record.request_id} is {record.status.value} and cannot be cancelled")
        self.record = record


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _record(flat: Sequence[bytes | str]) -> JobRecord:
    items = list(flat)
    return JobRecord.from_redis_hash(dict(zip(items[0::2], items[1::2], strict=True)))


def _num(value: float) -> str:
    return repr(float(value))


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


class JobStore:
    """Job records and their transitions; every transition is one atomic Lua script.

    ``queue_position`` is 0-based: the number of queued jobs ahead of this one (0 = runs next).
    """

    def __init__(
        self,
        redis_client: redis.Redis,
        *,
        namespace: str = "infinitetalk",
        lease_seconds: float = 60.0,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        max_releases: int = 5,
        retention_seconds: float = DAY,
        idempotency_seconds: float = DAY,
        tombstone_seconds: float = 7 * DAY,
        max_queued: int | None = 1000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not namespace or any(c in namespace for c in "{}"):
            raise ValueError(f"namespace must be non-empty and free of braces, got {namespace!r}")
        if lease_seconds <= 0:
            raise ValueError(f"lease_seconds must be positive, got {lease_seconds!r}")
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts!r}")
        if max_releases < 0:
            raise ValueError(f"max_releases must not be negative, got {max_releases!r}")
        for name, value in (
            ("retention_seconds", retention_seconds),
            ("idempotency_seconds", idempotency_seconds),
            ("tombstone_seconds", tombstone_seconds),
        ):
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value!r}")
        if max_queued is not None and max_queued < 0:
            raise ValueError(f"max_queued must not be negative, got {max_queued!r}")
        self._redis = redis_client
        self.namespace = namespace
        self.lease_seconds = float(lease_seconds)
        self.max_attempts = int(max_attempts)
        self.max_releases = int(max_releases)
        self.retention_seconds = float(retention_seconds)
        self.idempotency_seconds = float(idempotency_seconds)
        self.tombstone_seconds = float(tombstone_seconds)
        self.max_queued = max_queued
        self._clock = clock

        self._prefix = f"{{{namespace}}}:"
        self._queue = self._prefix + "queue"
        self._leases = self._prefix + "leases"
        self._expiry = self._prefix + "expiry"
        self._counts = self._prefix + "counts"
        self._seq = self._prefix + "seq"
        self._draining = self._prefix + "draining"
        self._base_keys = [self._queue, self._leases, self._expiry, self._counts]

        register = redis_client.register_script
        self._create_script = register(_PRELUDE + _CREATE)
        self._cancel_script = register(_PRELUDE + _CANCEL)
        self._claim_script = register(_PRELUDE + _TRY_CLAIM + _CLAIM)
        self._claim_next_script = register(_PRELUDE + _TRY_CLAIM + _CLAIM_NEXT)
        self._heartbeat_script = register(_PRELUDE + _HEARTBEAT)
        self._finish_script = register(_PRELUDE + _FINISH)
        self._release_script = register(_PRELUDE + _RELEASE)
        self._reap_script = register(_PRELUDE + _REAP)
        self._delete_script = register(_PRELUDE + _DELETE)

    # -- keys -----------------------------------------------------------------------------------------------

    # Public: the asynchronous reader of the status path (serve/jobs/reader.py) reads the same keys.
    def job_key(self, request_id: str) -> str:
        return f"{self._prefix}job:{request_id}"

    def gone_key(self, request_id: str) -> str:
        return f"{self._prefix}gone:{request_id}"

    @property
    def queue_key(self) -> str:
        return self._queue

    def _idem_key(self, tenant: str, idempotency_key: str | None) -> str:
        # Hashed: tenant and key are caller-chosen strings, and joining them with a separator is ambiguous.
        digest = hashlib.sha256(_json([tenant, idempotency_key]).encode()).hexdigest()
        return f"{self._prefix}idem:{digest}"

    def _keys(self, *extra: str) -> list[str]:
        return [*self._base_keys, *extra]

    def _exhausted_error(self) -> str:
        error = JobError(
            RETRIES_EXHAUSTED,
            "The job was started the maximum number of times and its worker stopped responding each time.",
        )
        return _json(error.to_dict())

    # -- submit and read ------------------------------------------------------------------------------------

    def create(
        self, record: JobRecord, idempotency_key: str | None = None, body_hash: str | None = None
    ) -> tuple[JobRecord, bool]:
        """Store a new queued job. Returns (record, created); created is False for an idempotent replay.

        The store stamps status, attempt, max_attempts and times; the caller supplies id, tenant, params and
        inputs. An idempotent replay is answered even when the queue is full (the job was accepted before).
        """
        if idempotency_key is not None and not body_hash:
            raise ValueError("an idempotency key needs the hash of the request body")
        now = self._clock()
        stored = replace(
            record,
            status=JobStatus.IN_QUEUE,
            created_at=now,
            updated_at=now,
            started_at=None,
            finished_at=None,
            attempt=0,
            max_attempts=self.max_attempts,
            progress=0.0,
            eta_seconds=None,
            error=None,
            output=None,
            expires_at=None,
            cancel_requested=False,
            lease_owner=None,
            lease_expires_at=None,
            idempotency_key=idempotency_key,
        )
        pairs = [item for kv in stored.to_redis_hash().items() for item in kv]
        reply = self._create_script(
            keys=self._keys(
                self.job_key(record.request_id), self._seq, self._idem_key(record.tenant, idempotency_key)
            ),
            args=[
                record.request_id,
                -1 if self.max_queued is None else self.max_queued,
                "1" if idempotency_key is not None else "0",
                body_hash or "",
                int(self.idempotency_seconds * 1000),
                self._prefix + "job:",
                *pairs,
            ],
        )
        outcome = _text(reply[0])
        if outcome == "created":
            logger.info("job %s created for tenant %s", record.request_id, record.tenant)
            return _record(reply[1]), True
        if outcome == "existing":
            existing = _record(reply[1])
            logger.info("job %s: idempotent replay answered with %s", record.request_id, existing.request_id)
            return existing, False
        if outcome == "conflict":
            raise IdempotencyConflict(_text(reply[1]))
        if outcome == "full":
            raise QueueFull(f"the queue already holds {self.max_queued} jobs")
        raise ValueError(f"a job with request_id {record.request_id!r} already exists")

    def lookup_idempotent(self, tenant: str, idempotency_key: str, body_hash: str) -> JobRecord | None:
        """The job an earlier submit with this key made, checked before the ingress fetches and stages inputs.

        Only a shortcut: ``create`` makes the binding decision atomically.
        """
        entry = self._redis.hmget(self._idem_key(tenant, idempotency_key), ["request_id", "body_hash"])
        if entry[0] is None:
            return None
        existing = self.get(_text(entry[0]), tenant)
        if existing is None:
            return None
        if _text(entry[1]) != body_hash:
            raise IdempotencyConflict(existing.request_id)
        return existing

    def get(self, request_id: str, tenant: str | None = None) -> JobRecord | None:
        """The record, or None if absent or owned by another tenant (``tenant=None``: any tenant)."""
        return record_of(self._redis.hgetall(self.job_key(request_id)), tenant)

    def is_gone(self, request_id: str, tenant: str) -> bool:
        """Whether this tenant's job existed and was deleted after its retention (the API answers 410)."""
        return is_owner(self._redis.get(self.gone_key(request_id)), tenant)

    def queue_position(self, request_id: str) -> int | None:
        """0-based: how many queued jobs are ahead of this one; None when the job is not queued."""
        return self._redis.zrank(self._queue, request_id)

    def queued_count(self) -> int:
        return self._redis.zcard(self._queue)

    def in_progress_count(self) -> int:
        return self._redis.zcard(self._leases)

    def counts(self) -> dict[JobStatus, int]:
        """Jobs per status, from counters the scripts maintain (one HGETALL, no scan)."""
        raw = {_text(k): int(v) for k, v in self._redis.hgetall(self._counts).items()}
        return {status: raw.get(status.value, 0) for status in JobStatus}

    def queued_ids(self, limit: int = 100) -> list[str]:
        """Queued job ids in run order, for a re-publisher that makes sure each has a live message."""
        if limit <= 0:
            return []
        return [_text(v) for v in self._redis.zrange(self._queue, 0, limit - 1)]

    def set_draining(self, retry_after_seconds: int | None) -> None:
        """Stop (a number of seconds clients should wait) or resume (None) admitting new jobs, app-wide.

        Draining refuses submissions only: queued and running jobs go on, status, result and cancel answer.
        """
        if retry_after_seconds is None:
            self._redis.delete(self._draining)
        elif isinstance(retry_after_seconds, bool) or retry_after_seconds < 1:
            raise ValueError(
                f"retry_after_seconds must be a positive whole number, got {retry_after_seconds!r}"
            )
        else:
            self._redis.set(self._draining, int(retry_after_seconds))

    def draining_retry_after(self) -> int | None:
        """Seconds a refused client should wait while the app drains; None when it admits jobs."""
        value = self._redis.get(self._draining)
        return None if value is None else int(value)

    def ping(self) -> bool:
        try:
            return bool(self._redis.ping())
        except redis.RedisError:
            return False

    # -- client actions -------------------------------------------------------------------------------------

    def cancel(self, request_id: str, tenant: str) -> JobRecord:
        """Cancel a queued job: it then never runs. Cancelling a cancelled job returns it unchanged."""
        now = self._clock()
        reply = self._cancel_script(
            keys=self._keys(self.job_key(request_id)),
            args=[request_id, tenant, _num(now), _num(now + self.retention_seconds)],
        )
        outcome = _text(reply[0])
        if outcome == "missing":
            raise JobNotFound(f"no job {request_id}")
        record = _record(reply[1])
        if outcome == "conflict":
            raise CancelConflict(record)
        logger.info("job %s cancelled", request_id)
        return record

    # -- worker actions -------------------------------------------------------------------------------------

    def claim(self, request_id: str, worker_id: str) -> JobRecord | None:
        """Take the job for one attempt; None means "do not run it" (drop the message).

        None for: unknown, cancelled or finished jobs; a job a live lease holds, even this worker's (a
        duplicate delivery); a job that used up its attempts (it is failed here with ``retries_exhausted``).
        ``worker_id`` should name one execution (e.g. replica id + a fresh uuid per message), so two
        deliveries handled by one replica never share a lease.
        """
        return self._claim_with(self._claim_script, request_id, worker_id, [])

    def claim_next(self, request_id: str, worker_id: str) -> JobRecord | None:
        """Take the oldest queued job for one attempt, or ``request_id``'s job when none is queued.

        What a delivery of ``request_id``'s message runs: the queue's order, not the messages', decides which
        job goes first. None as for ``claim``.
        """
        return self._claim_with(self._claim_next_script, request_id, worker_id, [self._prefix + "job:"])

    def _claim_with(
        self, script: Any, request_id: str, worker_id: str, extra_args: list[str]
    ) -> JobRecord | None:
        now = self._clock()
        reply = script(
            keys=self._keys(self.job_key(request_id)),
            args=[
                request_id,
                worker_id,
                _num(now),
                _num(now + self.lease_seconds),
                _num(now + self.retention_seconds),
                self._exhausted_error(),
                *extra_args,
            ],
        )
        outcome = _text(reply[0])
        if outcome == "claimed":
            record = _record(reply[1])
            logger.info("job %s claimed by %s (attempt %d)", record.request_id, worker_id, record.attempt)
            return record
        if outcome == "exhausted":
            logger.warning("job %s failed: retries exhausted", request_id)
        else:
            logger.info("job %s not claimed by %s: %s", request_id, worker_id, outcome)
        return None

    def heartbeat(
        self,
        request_id: str,
        worker_id: str,
        progress: float | None = None,
        eta_seconds: float | None = None,
    ) -> bool:
        """Extend the lease (and report progress). False: the worker lost the job and must stop."""
        if progress is not None and not 0.0 <= progress <= 1.0:
            raise ValueError(f"progress must be within [0, 1], got {progress!r}")
        if eta_seconds is not None and eta_seconds < 0:
            raise ValueError(f"eta_seconds must not be negative, got {eta_seconds!r}")
        now = self._clock()
        owned = self._heartbeat_script(
            keys=self._keys(self.job_key(request_id)),
            args=[
                request_id,
                worker_id,
                _num(now),
                _num(now + self.lease_seconds),
                "" if progress is None else _num(progress),
                "" if eta_seconds is None else _num(eta_seconds),
            ],
        )
        return bool(owned)

    def complete(
        self,
        request_id: str,
        worker_id: str,
        output: Mapping[str, str],
        timings: Mapping[str, float] | None = None,
        reproducibility: Mapping[str, Any] | None = None,
    ) -> bool:
        """Publish the result. False when the worker no longer owns the job: its output must not be shown.

        Repeating the same call (a retry after a lost reply) answers True again without changing anything.
        """
        done = self._finish(
            request_id,
            worker_id,
            JobStatus.COMPLETED,
            {
                "output": _json(dict(output)),
                "timings": _json(dict(timings or {})),
                "reproducibility": _json(dict(reproducibility or {})),
                "progress": "1.0",
            },
        )
        if done:
            logger.info("job %s completed by %s", request_id, worker_id)
        return done

    def fail(self, request_id: str, worker_id: str, error: JobError) -> bool:
        """End the job as failed with a typed error (no retry: the error is the job's, not the worker's).

        Like ``complete``, repeating the same call answers True again.
        """
        done = self._finish(request_id, worker_id, JobStatus.FAILED, {"error": _json(error.to_dict())})
        if done:
            logger.info("job %s failed (%s) on %s", request_id, error.code, worker_id)
        return done

    def _finish(self, request_id: str, worker_id: str, status: JobStatus, values: Mapping[str, str]) -> bool:
        now = self._clock()
        owned = self._finish_script(
            keys=self._keys(self.job_key(request_id)),
            args=[
                request_id,
                worker_id,
                _num(now),
                _num(now + self.retention_seconds),
                status.value,
                *[item for kv in values.items() for item in kv],
            ],
        )
        if not owned:
            logger.warning(
                "job %s: %s by %s refused (not the lease owner)", request_id, status.value, worker_id
            )
        return bool(owned)

    def release(self, request_id: str, worker_id: str) -> bool:
        """Hand the job back to the queue at its original place (graceful shutdown); the caller re-publishes.

        Gives the attempt back, up to ``max_releases`` times per job.
        """
        released = self._release_script(
            keys=self._keys(self.job_key(request_id)),
            args=[request_id, worker_id, _num(self._clock()), self.max_releases],
        )
        if released:
            logger.info("job %s released by %s", request_id, worker_id)
        return bool(released)

    # -- housekeeping ---------------------------------------------------------------------------------------

    def requeue_expired(self, now: float | None = None, limit: int = 1000) -> tuple[list[str], list[str]]:
        """The reaper: jobs whose lease expired go back to the queue, or fail once their attempts are used up.

        Returns (requeued ids, failed ids); the caller re-publishes a message for each requeued id.
        """
        now = self._clock() if now is None else now
        requeued, failed = self._reap_script(
            keys=self._keys(),
            args=[
                self._prefix + "job:",
                _num(now),
                limit,
                _num(now + self.retention_seconds),
                self._exhausted_error(),
            ],
        )
        requeued_ids, failed_ids = [_text(v) for v in requeued], [_text(v) for v in failed]
        if requeued_ids or failed_ids:
            logger.warning("lease expired: requeued %s, failed %s", requeued_ids, failed_ids)
        return requeued_ids, failed_ids

    def list_expired_results(self, now: float | None = None, limit: int = 1000) -> list[str]:
        """Finished jobs whose retention is over, oldest first: delete their files, then ``delete`` them."""
        now = self._clock() if now is None else now
        return [_text(v) for v in self._redis.zrangebyscore(self._expiry, "-inf", now, start=0, num=limit)]

    def delete(self, request_id: str) -> bool:
        """Remove a finished job, leaving a tombstone for ``is_gone``.

        Refuses (False) a job that is not terminal: deleting it would break the promise that an accepted job
        ends completed, failed or cancelled.
        """
        record = self.get(request_id)
        if record is None:
            return False
        deleted = self._delete_script(
            keys=self._keys(
                self.job_key(request_id),
                self.gone_key(request_id),
                self._idem_key(record.tenant, record.idempotency_key),
            ),
            args=[request_id, int(self.tombstone_seconds * 1000)],
        )
        if deleted:
            logger.info("job %s deleted after retention", request_id)
        return bool(deleted)
