"""A short Locust run against the e2e stack through ``python -m loadtest.run``: no lost job, no 5xx.

Sized for the tiny stack (one sampler, ~30-50 s per job on 2 busy cores): three job users, one of each job
mode (``--modes``), and a status poller for 45 s, at most four jobs. What is still queued when the run ends
is cancelled (counted as cancelled, not lost) and the job still running is followed to its end by the
runner's drain, so every accepted job is accounted for. (Whether a job also finishes inside the 45 s, giving
the ``job end-to-end`` entry a figure, depends on the machine; the longer runs in docs/reliability.md have
it.)
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from loadtest.entries import STATUS_NAME, SUBMIT_NAMES
from loadtest.stack import REPO_ROOT, TOKEN

pytestmark = pytest.mark.e2e

RUN_TIME_S = 45
DRAIN_TIMEOUT_S = 180
# Three job users start at once, one job of each mode (portrait, two speakers, dubbing), in that order.
ARGS = [
    *("--users", "4", "--job-users", "3", "--max-jobs", "4", "--shape-steps", "1", "--poll-interval", "1"),
    *("--modes", "image:1,multi:1,video:1"),
]


def test_locust_smoke(idle_stack, tmp_path: Path) -> None:
    results = tmp_path / "results"
    command = [
        sys.executable,
        "-m",
        "loadtest.run",
        "--host",
        idle_stack.base_url,
        "--token",
        TOKEN,
        "--time",
        f"{RUN_TIME_S}s",
        *ARGS,
        "--results",
        str(results),
        "--drain-timeout",
        str(DRAIN_TIMEOUT_S),
        "--cancel-queued-at-end",
    ]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
    run = subprocess.run(
        command,
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIME_S + DRAIN_TIMEOUT_S + 180,
        check=False,
    )
    print(run.stdout)
    assert (results / "summary.json").exists(), f"loadtest.run exited {run.returncode}: {run.stderr[-3000:]}"
    summary = json.loads((results / "summary.json").read_text())

    assert summary["lost"] == [], run.stdout
    assert summary["server_errors"] == 0, summary["api_errors"]
    assert summary["accepted"] >= 2, run.stdout
    assert summary["completed"] >= 1 and summary["failed"] == 0, run.stdout
    assert summary["completed"] + summary["cancelled"] == summary["accepted"]
    assert run.returncode == 0, run.stdout + run.stderr

    # Locust's own reports, with one statistics row per endpoint (ids grouped), not one per job.
    assert (results / "report.html").stat().st_size > 0
    with (results / "locust_stats.csv").open(newline="") as file:
        names = {row["Name"] for row in csv.DictReader(file)}
    assert {*SUBMIT_NAMES.values(), STATUS_NAME} <= names
    assert not any(len(part) == 32 for name in names for part in name.split("/")), names
