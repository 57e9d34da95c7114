"""Replicas killed (SIGKILL) or frozen (SIGSTOP) while jobs run: every accepted job still ends, once, a
frozen run that wakes up cannot change a finished job, and no status is lost.

The ingress test runs last on purpose (this file sorts after test_jobs.py, and pytest keeps the order of the
tests in a file): it compares the status of every job the earlier tests submitted.
Each test prints its timeline (run with ``-s`` to see it).
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlsplit

import pytest

from serve.jobs.runner import run_token

from .integration_stack import (
    LEASE_SECONDS,
    MAX_ATTEMPTS,
    MAX_RUN_SECONDS,
    TERMINAL,
    Observation,
    Stack,
    observe,
    timeline,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FAST = {"128_steps": 6}
# About twice a FAST job: it keeps one replica busy while the test watches the other.
LONGER = {"128_steps": 6, "270_value": 250}
JOB_TIMEOUT_S = 300.0
START_TIMEOUT_S = 60.0


def _report(title: str, events: dict[str, float], history: list[Observation], since: float) -> str:
    marks = ", ".join(f"{name} t={at - since:.1f}s" for name, at in events.items())
    return f"\n{title}: {marks}\n{timeline(history, since)}"


def test_killed_sampler_job_is_retried_and_completes_once(stack: Stack) -> None:
    request_id = stack.submit(**FAST)
    submitted_at = time.time()
    history: list[Observation] = []
    stack.poll(request_id, lambda s: s["status"] == "in_progress", 120.0, history, interval_s=0.25)
    time.sleep(2.0)  # well inside the ~30 s job: generating, not claiming
    owner = stack.record(request_id).lease_owner
    victim = next(r for r in stack.replicas("Sampler") if owner and owner.startswith(r.replica_id + ":"))
    assert stack.status(request_id)["status"] == "in_progress"
    killed_at = stack.kill(victim)
    time.sleep(0.5)  # a heartbeat already on the wire lands before we read the dead lease's end
    dead = stack.record(request_id)
    assert (dead.status.value, dead.lease_owner, dead.attempt) == ("in_progress", owner, 1)

    events = {"claimed": dead.started_at, "killed": killed_at, "lease expires": dead.lease_expires_at}
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while True:
        status = stack.status(request_id)
        history.append(observe(status))
        if status["status"] == "in_queue":
            events.setdefault("requeued (seen)", time.time())
        if status["attempt"] >= 2 and "retry claimed" not in events:
            events["retry claimed"] = stack.record(request_id).started_at
        if status["status"] in TERMINAL:
            events[status["status"]] = time.time()
            break
        assert time.monotonic() < deadline, _report("stuck", events, history, submitted_at)
        time.sleep(0.25)
    stack.wait_healthy()
    (replacement,) = [r for r in stack.replicas("Sampler") if r.started_at > killed_at]
    events["replacement started"] = replacement.started_at
    print(_report(f"sampler {victim.replica_id} (pid {victim.pid}) killed", events, history, submitted_at))

    final = history[-1]
    assert final.status == "completed" or (
        final.status == "failed" and stack.status(request_id)["error"]["code"] == "retries_exhausted"
    ), stack.status(request_id)
    assert 2 <= final.attempt <= MAX_ATTEMPTS, "the killed execution counts as an attempt, and it is retried"
    assert {o.status for o in history} <= {"in_queue", "in_progress", final.status}
    # The retry was claimed only once the dead execution's lease had run out: never two at once.
    assert events["retry claimed"] >= dead.lease_expires_at
    assert victim.pid not in {r.pid for r in stack.replicas("Sampler")}
    if final.status == "completed":
        # The one object shown is the retry's: its run token, not the killed run's, is in the key.
        key = stack.assert_single_output(request_id)
        assert run_token(owner) not in key.split("/"), (owner, key)
    else:
        assert stack.output_files(request_id) == []


def test_killed_audio_encoder_job_still_completes(stack: Stack) -> None:
    (encoder,) = stack.replicas("AudioEncoder")
    killed_at = stack.kill(encoder)
    request_id = stack.submit(**FAST)  # claimed at once, so its speech encoding meets the dead encoder
    history: list[Observation] = []
    final = stack.wait_terminal(request_id, JOB_TIMEOUT_S, history=history, interval_s=0.25)
    record = stack.record(request_id)
    stack.wait_healthy()
    (replacement,) = stack.replicas("AudioEncoder")
    events = {
        "encoder killed": killed_at,
        "last claim": record.started_at,
        "replacement started": replacement.started_at,
        final["status"]: history[-1].at,
    }
    print(_report(f"audio encoder (pid {encoder.pid}) killed", events, history, killed_at))

    assert final["status"] == "completed", final
    assert 1 <= final["attempt"] <= MAX_ATTEMPTS
    stack.assert_single_output(request_id)
    assert replacement.pid != encoder.pid


def _unsigned(result: dict[str, Any]) -> dict[str, Any]:
    """A result with its output link's signature and expiry (fresh on every read) left out."""
    video = urlsplit(result["output"]["video"])
    return {**result, "output": {**result["output"], "video": video._replace(query="").geturl()}}


def _only_it_takes_the_next_job(stack: Stack, replica_id: str, busy: str, seed: int) -> str:
    """While job ``busy`` holds the other Sampler replica, a new job can only start on ``replica_id``, and
    only once that replica's worker is free: submit one, and check it ran there; its request id."""
    following = stack.submit(**FAST, **{"128_seed": seed})
    stack.poll(following, lambda s: s["status"] != "in_queue", START_TIMEOUT_S, interval_s=0.1)
    assert stack.status(busy)["status"] == "in_progress", "the other replica went idle too early"
    assert stack.replica_of(following) == replica_id
    assert stack.wait_terminal(following, JOB_TIMEOUT_S)["status"] == "completed"
    stack.assert_single_output(following)
    assert stack.wait_terminal(busy, JOB_TIMEOUT_S)["status"] == "completed"
    return following


def test_a_frozen_sampler_that_wakes_cannot_change_the_finished_job(stack: Stack) -> None:
    stack.wait_idle()
    request_id = stack.submit(**FAST, **{"128_seed": 71})
    submitted_at = time.time()
    history: list[Observation] = []
    stack.poll(request_id, lambda s: s["status"] == "in_progress", START_TIMEOUT_S, history, interval_s=0.1)
    time.sleep(2.0)  # generating, not claiming
    owner = stack.record(request_id).lease_owner
    assert owner is not None
    (victim,) = [r for r in stack.replicas("Sampler") if owner.startswith(r.replica_id + ":")]

    with stack.paused(victim) as paused_at:
        time.sleep(0.5)  # a heartbeat already on the wire lands before we read the lease's end
        events = {"frozen": paused_at, "lease expires": stack.record(request_id).lease_expires_at}
        # The job's lease runs out while its worker is frozen; the other replica retries and completes it.
        final = stack.wait_terminal(request_id, JOB_TIMEOUT_S, history=history, interval_s=0.25)
        won = stack.record(request_id)
        events |= {"retry claimed": won.started_at, final["status"]: won.finished_at}
        assert final["status"] == "completed", final
        assert won.attempt == 2 and won.started_at >= events["lease expires"], won
        assert won.lease_owner != owner
        winner_key = stack.assert_single_output(request_id)
        before = _unsigned(stack.result(request_id))
        # Hold the other replica, so the next job can only start on the frozen one once it wakes and its
        # stale run has given up.
        busy = stack.submit(**LONGER, **{"128_seed": 72})
        stack.poll(busy, lambda s: s["status"] == "in_progress", START_TIMEOUT_S, interval_s=0.1)
    events["woken"] = time.time()

    following = _only_it_takes_the_next_job(stack, victim.replica_id, busy, seed=73)
    events["its next job claimed"] = stack.record(following).started_at
    print(_report(f"sampler {victim.replica_id} (pid {victim.pid}) frozen", events, history, submitted_at))

    # The stale run ended without a trace: the job, its result and its one stored object are the winner's.
    assert _unsigned(stack.result(request_id)) == before
    assert stack.assert_single_output(request_id) == winner_key
    assert run_token(owner) not in winner_key.split("/")
    assert stack.record(request_id).attempt == 2
    assert victim.pid in {r.pid for r in stack.replicas("Sampler")}, "the frozen replica was replaced"


def test_a_hung_job_is_ended_by_the_time_limit(stack: Stack) -> None:
    stack.wait_idle()
    (encoder,) = stack.replicas("AudioEncoder")
    history: list[Observation] = []
    with stack.paused(encoder) as frozen_at:
        # The job's sampler waits on the frozen encoder (a hung call) while its heartbeat keeps the lease.
        request_id = stack.submit(**FAST, **{"128_seed": 81})
        stack.poll(request_id, lambda s: s["status"] == "in_progress", START_TIMEOUT_S, history, 0.1)
        hung = stack.record(request_id)
        hung_replica = stack.replica_of(request_id)
        assert hung.started_at is not None and hung.run_deadline_at is not None
        assert abs(hung.run_deadline_at - (hung.started_at + MAX_RUN_SECONDS)) < 0.01
        # Rather than wait out the limit, the run reaches it 5 s from now, as if it had run that long.
        deadline = time.time() + 5.0
        stack.bring_run_deadline_to(request_id, deadline)
        final = stack.wait_terminal(request_id, 60.0, history=history, interval_s=0.5)
        ended = stack.record(request_id)
        # Hold the other replica, so the next job can only start on the hung one once its call returns.
        busy = stack.submit(**LONGER, **{"128_seed": 82})
        stack.poll(busy, lambda s: s["status"] == "in_progress", START_TIMEOUT_S, interval_s=0.1)
        assert stack.replica_of(busy) != hung_replica
    events = {
        "encoder frozen": frozen_at,
        "claimed": hung.started_at,
        "run deadline": deadline,
        final["status"]: ended.finished_at,
        "encoder woken": time.time(),
    }

    assert final["status"] == "failed" and final["error"]["code"] == "time_limit", final
    assert f"{MAX_RUN_SECONDS:g} s" in final["error"]["message"], final
    assert {o.attempt for o in history} == {1}, "the hung run held its lease to the end: no retry"
    # Ended by the maintenance loop within a period (1 s) and a heartbeat (a third of the lease) of its
    # deadline; the slack is for a busy machine.
    assert ended.finished_at is not None
    overrun = ended.finished_at - deadline
    assert -0.5 <= overrun <= LEASE_SECONDS, events
    assert ended.output_key is None and stack.output_files(request_id) == []

    # Woken, the hung run sees its job has ended and stops without output; its replica runs the next job.
    following = _only_it_takes_the_next_job(stack, hung_replica, busy, seed=83)
    events["its next job claimed"] = stack.record(following).started_at
    print(_report("audio encoder frozen, job hung", events, history, frozen_at))
    assert stack.status(request_id) == final
    assert stack.output_files(request_id) == []


def test_restarted_ingress_keeps_every_job_status(stack: Stack) -> None:
    if not stack.submitted:  # run alone: make a job to look at
        stack.submit(**FAST)
    for request_id in stack.submitted:
        stack.wait_terminal(request_id, JOB_TIMEOUT_S)
    before = {request_id: stack.status(request_id) for request_id in stack.submitted}

    (ingress,) = stack.replicas("Ingress")
    killed_at = stack.kill(ingress)
    stack.wait_healthy()
    (restarted,) = stack.replicas("Ingress")
    healed = time.time() - killed_at
    print(f"\ningress pid {ingress.pid} killed; pid {restarted.pid} serving {healed:.1f}s later")

    assert restarted.pid != ingress.pid
    after = {request_id: stack.status(request_id) for request_id in stack.submitted}
    assert after == before
    for request_id, status in after.items():
        if status["status"] == "completed":
            assert stack.result(request_id)["output"]["video"].startswith(stack.base_url)
