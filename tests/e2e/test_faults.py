"""Fault scenarios of ``loadtest.faults`` against the e2e stack, each bounded in time.

Every scenario must end with every accepted job terminal (none lost) and no duplicate result visible (each
completed job shows one stable output: one object in storage, a decodable MP4 of the requested size and
length). Each starts from an idle stack whose replicas are all up (the ``idle_stack`` fixture), so a replica
killed by the previous scenario has been replaced first. They run last in the session (conftest).
"""

from __future__ import annotations

import pytest

from loadtest import faults
from loadtest.faults import FaultReport, FaultTarget

pytestmark = [pytest.mark.e2e, pytest.mark.faults]


def _assert_sound(report: FaultReport) -> None:
    print(report.render())
    assert report.accepted, "the scenario got no job accepted"
    assert report.lost == [], report.render()
    assert report.duplicates == [], report.render()
    assert set(report.states.values()) <= {"completed", "failed", "cancelled"}, report.render()


def test_kill_sampler_mid_job(idle_stack, fault_target: FaultTarget) -> None:
    report = faults.kill_sampler(fault_target, timeout=420)
    _assert_sound(report)
    killed, queued = report.accepted
    # The killed job ran again on a new attempt and finished; the job queued behind it ran too.
    assert report.states == {killed: "completed", queued: "completed"}, report.render()
    assert (report.attempts[killed] or 0) >= 2, report.render()
    assert report.replica_restart_seconds is not None and report.recovery_seconds is not None
    assert "500" not in report.api_errors, report.render()


def test_kill_ingress(idle_stack, fault_target: FaultTarget) -> None:
    report = faults.kill_ingress(fault_target, timeout=300)
    _assert_sound(report)
    running = report.accepted[0]
    assert report.states[running] == "completed", report.render()  # the ingress is not on the job's path
    assert report.recovery_seconds is not None and report.recovery_seconds < 180, report.render()
    assert len(report.accepted) == 2, "the restarted ingress did not accept a job"
    # The API itself never answers 500; the one poll in flight to the killed process may get the front's 5xx.
    assert "500" not in report.api_errors, report.render()
    assert report.api_errors.get("front 500", 0) + report.api_errors.get("front 502", 0) <= 1, report.render()


def test_kill_audio_encoder(idle_stack, fault_target: FaultTarget) -> None:
    report = faults.kill_audio_encoder(fault_target, timeout=360)
    _assert_sound(report)
    (job,) = report.accepted
    assert report.states[job] == "completed", report.render()
    assert report.replica_restart_seconds is not None, report.render()


def test_restart_redis(idle_stack, fault_target: FaultTarget) -> None:
    report = faults.restart_redis(fault_target, timeout=360)
    _assert_sound(report)
    # The records and the queue survived the restart through the AOF: both jobs ran to the end.
    assert set(report.states.values()) == {"completed"}, report.render()
    # While Redis was down the API answered 503 (with Retry-After), never a 500 or a hang.
    assert set(report.api_errors) <= {"503"}, report.render()
    assert report.recovery_seconds is not None and report.recovery_seconds < 60, report.render()


def test_fill_queue(idle_stack, fault_target: FaultTarget) -> None:
    report = faults.fill_queue(fault_target, timeout=300)
    _assert_sound(report)
    assert report.api_errors == {"429": 1}, report.render()
    assert report.details["code"] == "queue_full", report.render()
    assert report.details["status"] == 429, report.render()
    assert report.details["retry_after"] > 0, report.render()
    # The bound counts queued jobs: one more may have been taken by the idle sampler meanwhile.
    filled = len(report.accepted) - 1  # the last one was accepted after the queue was cancelled
    assert fault_target.max_queued <= filled <= fault_target.max_queued + 1, report.render()
    assert report.recovery_seconds is not None, report.render()
