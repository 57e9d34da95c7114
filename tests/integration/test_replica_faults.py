"""Replicas killed with SIGKILL while jobs run: every accepted job still ends, once, and no status is lost.

The ingress test runs last on purpose (this file sorts after test_jobs.py, and pytest keeps the order of the
tests in a file): it compares the status of every job the earlier tests submitted.
Each test prints its timeline (run with ``-s`` to see it).
"""

from __future__ import annotations

import time

import pytest

from serve.jobs.runner import run_token

from .integration_stack import MAX_ATTEMPTS, TERMINAL, Observation, Stack, observe, timeline

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FAST = {"128_steps": 6}
JOB_TIMEOUT_S = 300.0


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
