"""The job store tells time by Redis: replicas whose clocks disagree still agree on leases and deadlines."""

from __future__ import annotations

import socket
import time

import redis

from serve.jobs.clock import RedisClock
from serve.jobs.operations import QueuePolicy
from serve.jobs.records import JobRecord, JobSettings, JobStatus
from serve.jobs.store import JobStore

SETTINGS = JobSettings("a woman is talking", 480, 480, 125, 1, 6, 11.0, 1.0)


def redis_now(client: redis.Redis) -> float:
    seconds, microseconds = client.time()
    return seconds + microseconds / 1e6


def test_a_host_two_minutes_ahead_reads_redis_time(redis_conn) -> None:
    clock = RedisClock(redis_conn, wall=lambda: time.time() + 120)
    assert abs(clock() - redis_now(redis_conn)) < 0.5
    assert abs(clock.offset + 120) < 0.5


def test_a_reaper_whose_host_runs_ahead_leaves_a_live_lease_alone(redis_conn) -> None:
    """Defect: leases were written with the sampler's clock and checked with the reaper's, so a reaper
    host 10 s ahead took a 2 s lease from a worker that had just claimed it."""
    policy = QueuePolicy(lease_seconds=2.0)
    sampler = JobStore(redis_conn, policy=policy, clock=RedisClock(redis_conn, wall=time.time))
    ingress = JobStore(redis_conn, policy=policy, clock=RedisClock(redis_conn, wall=lambda: time.time() + 10))
    ingress.create(JobRecord(request_id="a" * 32, tenant="acme", settings=SETTINGS))
    assert sampler.claim_next("replica-1:run1") is not None
    report = ingress.reap()
    assert report.requeued == [] and report.failed == []
    assert sampler.get("a" * 32).status is JobStatus.IN_PROGRESS


def test_without_redis_the_clock_keeps_its_last_offset() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    unreachable = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.2, socket_timeout=0.2)
    clock = RedisClock(unreachable, wall=lambda: 1000.0)
    assert clock() == 1000.0 and clock.offset == 0.0


def test_redis_is_asked_once_per_refresh_period(redis_conn, monkeypatch) -> None:
    reads = []
    time_command = redis_conn.time
    monkeypatch.setattr(redis_conn, "time", lambda: reads.append(1) or time_command())
    clock = RedisClock(redis_conn, refresh_seconds=60.0)
    for _ in range(100):
        clock()
    assert len(reads) == 1
