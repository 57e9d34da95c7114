"""loadtest.run's summary of a drained run: the jobs' server-side seconds and why the failed ones failed."""

from __future__ import annotations

import argparse
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from loadtest.client import DrainReport, JobOutcome
from loadtest.entries import job_user_count
from loadtest.run import summarise

START = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


def test_completed_jobs_give_their_seconds_and_failed_ones_their_codes(tmp_path) -> None:
    outcomes = {
        f"job{i}": JobOutcome(
            f"job{i}", "completed", created_at=START, finished_at=START + timedelta(seconds=10 * (i + 1))
        )
        for i in range(3)
    }
    outcomes["lost"] = JobOutcome("lost", "in_progress", created_at=START)
    outcomes["bad"] = JobOutcome("bad", "failed", error_code="invalid_audio", created_at=START)
    args = argparse.Namespace(host="http://127.0.0.1:8000", time="10s", users=2)
    summary = summarise(args, tmp_path, list(outcomes), Counter({202: 5}), DrainReport(outcomes), {})
    assert summary.server_job_seconds["count"] == 3
    assert summary.server_job_seconds["50%"] == pytest.approx(20.0)
    assert summary.failed_jobs == {"bad": "invalid_audio"}
    assert summary.lost == ["lost"] and not summary.ok


@pytest.mark.parametrize(
    ("mix", "users", "job_users"),
    [
        ("status-heavy", 2, 1),
        ("status-heavy", 4, 1),
        ("status-heavy", 10, 2),
        ("balanced", 5, 2),
        ("jobs", 3, 3),
    ],
)
def test_every_mix_runs_at_least_one_job_user_and_its_share(mix, users, job_users) -> None:
    assert job_user_count(mix, users) == job_users
