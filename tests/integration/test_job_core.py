"""The job core through the real HTTP stack: cancelling a running job, and fair turns between tenants.

Each test starts from an idle stack (no job queued or running, so both Sampler replicas are free), bounds
every wait, and leaves every job it made terminal. The maximum run time and a stale run that wakes after
its job was retried are fault tests: tests/integration/test_replica_faults.py.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from .integration_stack import (
    GREEDY_MAX_QUEUED,
    GREEDY_TENANT,
    GREEDY_TOKEN,
    OTHER_TENANT,
    OTHER_TOKEN,
    TERMINAL,
    Stack,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FAST = {"128_steps": 6}
# About twice a FAST job: it keeps its replica busy while the test looks at the other one.
LONGER = {"128_steps": 6, "270_value": 250}
START_TIMEOUT_S = 60.0
CANCEL_TIMEOUT_S = 60.0
JOB_TIMEOUT_S = 180.0


def _cancel_all(stack: Stack, request_ids: list[str]) -> None:
    """Cancel whatever of ``request_ids`` has not ended, then wait until all of them are terminal."""
    for request_id in request_ids:
        if stack.status(request_id)["status"] not in TERMINAL:
            assert stack.cancel(request_id).status_code in (200, 202, 409)
    for request_id in request_ids:
        stack.wait_terminal(request_id, CANCEL_TIMEOUT_S)


def test_a_running_job_is_cancelled_and_its_replica_takes_the_next(stack: Stack) -> None:
    stack.wait_idle()
    replicas = {r.replica_id: r.pid for r in stack.replicas("Sampler")}
    victim = stack.submit(**FAST, **{"128_seed": 11})
    busy = stack.submit(**LONGER, **{"128_seed": 12})  # holds the other replica
    for request_id in (victim, busy):
        stack.poll(request_id, lambda s: s["status"] == "in_progress", START_TIMEOUT_S, interval_s=0.1)
    victim_replica = stack.replica_of(victim)
    assert {victim_replica, stack.replica_of(busy)} == set(replicas), "one job per replica"

    cancelled_at = time.time()
    response = stack.cancel(victim)
    assert response.status_code == 202, response.text
    body = response.json()
    assert (body["status"], body.get("cancel_requested")) == ("in_progress", True), body
    assert stack.record(victim).cancel_requested

    # Until its worker stops at the next step, the job shows the pending cancel; then it is cancelled.
    seen: list[dict[str, Any]] = []
    final = stack.poll(
        victim, lambda s: seen.append(s) or s["status"] in TERMINAL, CANCEL_TIMEOUT_S, interval_s=0.2
    )
    stopped_after = time.time() - cancelled_at
    assert final["status"] == "cancelled", final
    assert all(s.get("cancel_requested") is True for s in seen if s["status"] == "in_progress"), seen
    assert {s["status"] for s in seen} <= {"in_progress", "cancelled"}, seen
    assert final["attempt"] == 1 and "error" not in final, final
    result = stack.result(victim)
    assert result["status"] == "cancelled" and "output" not in result, result
    record = stack.record(victim)
    assert record.output_key is None and record.finished_at is not None and record.finished_at >= cancelled_at
    assert stack.output_files(victim) == [], "a cancelled run leaves no video behind"
    again = stack.cancel(victim)
    assert again.status_code == 200 and again.json()["status"] == "cancelled", again.text

    # The replica that ran the cancelled job is free again, not replaced, and runs the next one: the other
    # replica is still busy, so only it can take the job.
    following = stack.submit(**FAST, **{"128_seed": 13})
    stack.poll(following, lambda s: s["status"] != "in_queue", START_TIMEOUT_S, interval_s=0.1)
    assert stack.status(busy)["status"] == "in_progress", "the other replica went idle too early"
    assert stack.replica_of(following) == victim_replica
    assert stack.wait_terminal(following, JOB_TIMEOUT_S)["status"] == "completed"
    stack.assert_single_output(following)
    assert stack.wait_terminal(busy, JOB_TIMEOUT_S)["status"] == "completed"
    assert {r.replica_id: r.pid for r in stack.replicas("Sampler")} == replicas
    print(f"\nrunning job cancelled: 202, ended cancelled {stopped_after:.1f}s later")


def test_a_tenant_past_its_queued_cap_is_refused_and_another_is_served_in_turn(stack: Stack) -> None:
    stack.wait_idle()
    with stack.as_tenant(GREEDY_TOKEN) as greedy, stack.as_tenant(OTHER_TOKEN) as other:
        made: list[tuple[Stack, str]] = []
        try:
            # The greedy tenant fills both replicas, then its own share of the queue.
            running = [greedy.submit(**LONGER, **{"128_seed": seed}) for seed in (21, 22)]
            made += [(greedy, request_id) for request_id in running]
            for request_id in running:
                greedy.poll(
                    request_id, lambda s: s["status"] == "in_progress", START_TIMEOUT_S, interval_s=0.2
                )
            queued = []
            for seed in range(GREEDY_MAX_QUEUED):
                queued.append(greedy.submit(**FAST, **{"128_seed": 30 + seed}))
                made.append((greedy, queued[-1]))
            assert [greedy.status(i)["status"] for i in queued] == ["in_queue"] * GREEDY_MAX_QUEUED

            refused = greedy.post_job(**FAST)
            assert refused.status_code == 429, refused.text
            assert refused.json()["error"]["code"] == "tenant_queue_full", refused.text
            assert int(refused.headers["Retry-After"]) > 0
            assert stack.store.tenant_usage(GREEDY_TENANT)["queued"] == GREEDY_MAX_QUEUED

            # Another tenant is still admitted, and its job waits behind at most one of the greedy ones.
            theirs = other.submit(**FAST, **{"128_seed": 40})
            made.append((other, theirs))
            waiting = other.status(theirs)
            assert waiting["status"] == "in_queue" and waiting["queue_position"] <= 1, waiting
            # The greedy tenant's last job has its own two ahead of it, and the other tenant's turn.
            assert greedy.status(queued[-1])["queue_position"] == GREEDY_MAX_QUEUED

            # Free both replicas: the other tenant's job starts before the greedy tenant's last one.
            for request_id in running:
                assert greedy.cancel(request_id).status_code == 202
            other.poll(theirs, lambda s: s["status"] != "in_queue", START_TIMEOUT_S, interval_s=0.2)
            assert greedy.status(queued[-1])["status"] == "in_queue", (
                "the greedy tenant's last job went first"
            )
        finally:
            for client, request_id in made:
                _cancel_all(client, [request_id])

        started = stack.record(theirs).started_at
        assert started is not None
        last_started = stack.record(queued[-1]).started_at
        assert last_started is None or last_started > started
        # Cancelled jobs leave their tenant's counts: the greedy tenant is admitted again.
        for tenant in (GREEDY_TENANT, OTHER_TENANT):
            assert stack.store.tenant_usage(tenant) == {"queued": 0, "running": 0, "upload_bytes": 0}, tenant
        again = greedy.submit(**FAST, **{"128_seed": 50})
        _cancel_all(greedy, [again])
        assert greedy.status(again)["status"] == "cancelled"
