"""Headless load test against a running stack, then an account of every job it submitted.

``python -m loadtest.run --host http://127.0.0.1:8000 --time 60s --users 4`` runs Locust headless (the
locustfile next to this module) for the given time, writes Locust's CSV files and HTML report into a
results folder, and then follows every job the run accepted until it is terminal or ``--drain-timeout``
passes (optionally cancelling those still queued, which then count as cancelled, not lost). It prints, and
writes to ``summary.json``:

* jobs submitted / accepted / completed / failed / cancelled / **lost** (accepted, never terminal);
* API errors by HTTP status (0 = no response) during the run;
* p50/p95/p99 of submit, status and the end-to-end job time (Locust's entries), the server-side job
  time (created → finished) of every completed job including those finished during the drain, and the
  request rate.

The exit status is 0 only when no job was lost and no response was a 5xx.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

from loadtest.client import (
    DEFAULT_TOKEN,
    EXAMPLE_AUDIO,
    EXAMPLE_IMAGE,
    SMALLEST_SIZE,
    ApiClient,
    DrainReport,
    parse_modes,
)
from loadtest.entries import JOB_NAME, MIXES, STATUS_NAME, SUBMIT_NAME, SUBMIT_NAMES, parse_timespan

HERE = Path(__file__).resolve().parent
LOCUSTFILE = HERE / "locustfile.py"
DEFAULT_RESULTS = HERE / "results"
PERCENTILES = ("50%", "95%", "99%")
# Locust needs a moment to start and to stop its users after --run-time.
LOCUST_OVERHEAD_S = 120.0


@dataclass
class Summary:
    """Everything a run measured; ``ok`` is the verdict the exit status reports."""

    host: str
    run_time_s: int
    users: int
    results_dir: str
    submitted: int = 0
    accepted: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    cancelled_at_end: int = 0
    lost: list[str] = field(default_factory=list)
    api_errors: dict[str, int] = field(default_factory=dict)
    drain_errors: dict[str, int] = field(default_factory=dict)
    latency_ms: dict[str, dict[str, float | None]] = field(default_factory=dict)
    server_job_seconds: dict[str, float | None] = field(default_factory=dict)
    requests_per_s: float = 0.0
    requests: int = 0
    drain_seconds: float = 0.0
    failed_jobs: dict[str, str] = field(default_factory=dict)

    @property
    def server_errors(self) -> int:
        return sum(count for status, count in self.api_errors.items() if int(status) >= 500)

    @property
    def ok(self) -> bool:
        return not self.lost and self.server_errors == 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m loadtest.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", required=True, help="base URL of the API, e.g. http://127.0.0.1:8000")
    parser.add_argument("--token", default=os.environ.get("INFINITETALK_TOKEN", DEFAULT_TOKEN))
    parser.add_argument("--time", default="60s", help="Locust --run-time (e.g. 45s, 5m)")
    parser.add_argument("--users", type=int, default=4, help="peak number of Locust users")
    parser.add_argument("--spawn-rate", type=float, default=0.0, help="users started per second (0: all)")
    parser.add_argument("--shape-steps", type=int, default=1, help="reach --users in this many steps")
    parser.add_argument("--mix", choices=sorted(MIXES), default="status-heavy")
    parser.add_argument("--job-users", type=int, default=0, help="fixed number of job users (0: by --mix)")
    parser.add_argument("--max-jobs", type=int, default=0, help="jobs to submit in all (0: no limit)")
    parser.add_argument("--image", default=EXAMPLE_IMAGE)
    parser.add_argument("--audio", default=EXAMPLE_AUDIO)
    parser.add_argument("--size", default=SMALLEST_SIZE)
    parser.add_argument(
        "--modes",
        default="image",
        type=_modes,
        help="job modes and weights: image (portrait), multi (two speakers), video (dubbing), e.g. "
        "image:8,multi:1,video:1",
    )
    parser.add_argument("--video", default="", help="video-to-video source (default: a generated clip)")
    parser.add_argument("--frames", type=int, default=125)
    parser.add_argument("--job-steps", type=int, default=6)
    parser.add_argument("--poll-interval", type=float, default=1.0)
    parser.add_argument("--no-download", action="store_true")
    parser.add_argument("--results", type=Path, default=None, help="results folder (default: timestamped)")
    parser.add_argument("--drain-timeout", type=float, default=600.0, help="seconds to follow jobs after")
    parser.add_argument(
        "--cancel-queued-at-end", action="store_true", help="cancel jobs still queued when the run ends"
    )
    return parser.parse_args(argv)


def _modes(text: str) -> str:
    """argparse type: a ``--modes`` value checked here, passed on to Locust as written."""
    try:
        parse_modes(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def locust_command(args: argparse.Namespace, results: Path) -> list[str]:
    spawn_rate = args.spawn_rate or args.users
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--host",
        args.host,
        "--users",
        str(args.users),
        "--spawn-rate",
        str(spawn_rate),
        "--run-time",
        args.time,
        "--csv",
        str(results / "locust"),
        "--html",
        str(results / "report.html"),
        "--logfile",
        str(results / "locust.log"),
        "--only-summary",
        "--exit-code-on-error",
        "0",
        "--token",
        args.token,
        "--image",
        args.image,
        "--audio",
        args.audio,
        "--size",
        args.size,
        "--modes",
        args.modes,
        "--video",
        args.video,
        "--frames",
        str(args.frames),
        "--job-steps",
        str(args.job_steps),
        "--mix",
        args.mix,
        "--job-users",
        str(args.job_users),
        "--max-jobs",
        str(args.max_jobs),
        "--poll-interval",
        str(args.poll_interval),
        "--shape-steps",
        str(args.shape_steps),
        "--ledger",
        str(results / "ledger.jsonl"),
    ]
    if args.no_download:
        command.append("--no-download")
    return command


def read_ledger(path: Path) -> tuple[list[str], Counter[int]]:
    """Accepted request ids (in order) and the HTTP status counts of the run."""
    accepted: list[str] = []
    statuses: Counter[int] = Counter()
    if not path.exists():
        return accepted, statuses
    for line in path.read_text().splitlines():
        entry = json.loads(line)
        if entry["event"] == "accepted":
            accepted.append(entry["id"])
        elif entry["event"] == "statuses":
            statuses.update({int(status): count for status, count in entry["counts"].items()})
    return accepted, statuses


def read_stats(path: Path) -> dict[str, dict[str, str]]:
    """Locust's ``*_stats.csv`` keyed by entry name (``Aggregated`` for the total row)."""
    if not path.exists():
        return {}
    with path.open(newline="") as file:
        return {row["Name"]: row for row in csv.DictReader(file)}


def _number(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "", "N/A") else None
    except ValueError:
        return None


def percentile(values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile (exact for the handful of jobs a run has)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = min(len(ordered), max(1, math.ceil(fraction * len(ordered))))
    return ordered[rank - 1]


def _seconds_between(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return (end - start).total_seconds()


def summarise(
    args: argparse.Namespace,
    results: Path,
    accepted: list[str],
    statuses: Counter[int],
    drain: DrainReport,
    stats: dict[str, dict[str, str]],
) -> Summary:
    states = drain.states()
    summary = Summary(
        host=args.host,
        run_time_s=parse_timespan(args.time),
        users=args.users,
        results_dir=str(results),
        submitted=sum(
            int(_number(stats.get(name, {}).get("Request Count")) or 0) for name in SUBMIT_NAMES.values()
        ),
        accepted=len(accepted),
        completed=states.get("completed", 0),
        failed=states.get("failed", 0),
        cancelled=states.get("cancelled", 0),
        cancelled_at_end=len(drain.cancelled_by_drain),
        lost=drain.lost,
        api_errors={str(status): n for status, n in sorted(statuses.items()) if status >= 400 or status == 0},
        drain_errors={str(status): n for status, n in sorted(drain.errors.items())},
        drain_seconds=round(drain.seconds, 1),
    )
    mode_submits = [(f"submit {mode}", name) for mode, name in SUBMIT_NAMES.items() if mode != "image"]
    for label, name in (
        ("submit", SUBMIT_NAME),
        *mode_submits,
        ("status", STATUS_NAME),
        ("end-to-end", JOB_NAME),
    ):
        row = stats.get(name, {})
        if label.startswith("submit ") and not row:
            continue  # a mode this run did not use
        summary.latency_ms[label] = {p: _number(row.get(p)) for p in PERCENTILES}
        summary.latency_ms[label]["count"] = _number(row.get("Request Count"))
    job_seconds = [
        seconds
        for outcome in drain.outcomes.values()
        if outcome.status == "completed"
        and (seconds := _seconds_between(outcome.created_at, outcome.finished_at)) is not None
    ]
    summary.server_job_seconds = {p: percentile(job_seconds, int(p[:-1]) / 100) for p in PERCENTILES} | {
        "count": float(len(job_seconds))
    }
    summary.failed_jobs = {
        rid: outcome.error_code or "unknown"
        for rid, outcome in drain.outcomes.items()
        if outcome.status == "failed"
    }
    total = stats.get("Aggregated", {})
    summary.requests_per_s = round(_number(total.get("Requests/s")) or 0.0, 2)
    summary.requests = int(_number(total.get("Request Count")) or 0)
    return summary


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def render(summary: Summary) -> str:
    lines = [
        f"load test of {summary.host}: {summary.users} users for {summary.run_time_s} s "
        f"(results in {summary.results_dir})",
        f"jobs: submitted {summary.submitted}, accepted {summary.accepted}, completed {summary.completed}, "
        f"failed {summary.failed}, cancelled {summary.cancelled} ({summary.cancelled_at_end} at the end), "
        f"lost {len(summary.lost)}",
        "API errors by status: "
        + (", ".join(f"{s}: {n}" for s, n in summary.api_errors.items()) or "none")
        + f" ({summary.server_errors} server errors)",
        f"{'latency (ms)':<14}{'p50':>9}{'p95':>9}{'p99':>9}{'count':>8}",
    ]
    for label, row in summary.latency_ms.items():
        lines.append(
            f"{label:<14}{_fmt(row['50%']):>9}{_fmt(row['95%']):>9}{_fmt(row['99%']):>9}{_fmt(row['count']):>8}"
        )
    job = summary.server_job_seconds
    lines.append(
        f"server-side job time (s): p50 {job['50%'] or 0:.1f}, p95 {job['95%'] or 0:.1f}, "
        f"p99 {job['99%'] or 0:.1f} over {job['count']:.0f} completed jobs"
    )
    lines.append(f"requests: {summary.requests} at {summary.requests_per_s} req/s")
    if summary.lost:
        lines.append(f"LOST jobs: {', '.join(summary.lost)}")
    if summary.failed_jobs:
        lines.append(
            "failed jobs: " + ", ".join(f"{rid} ({code})" for rid, code in summary.failed_jobs.items())
        )
    lines.append("verdict: " + ("ok" if summary.ok else "NOT OK (lost jobs or 5xx)"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = args.results or DEFAULT_RESULTS / time.strftime("%Y%m%d-%H%M%S")
    results.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE.parent), env.get("PYTHONPATH")]))
    run_time = parse_timespan(args.time)
    with (results / "locust.out").open("wb") as out:
        completed = subprocess.run(
            locust_command(args, results),
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=run_time + LOCUST_OVERHEAD_S,
            check=False,
        )
    if completed.returncode != 0:
        print(f"locust exited with {completed.returncode}; see {results / 'locust.out'}", file=sys.stderr)
    accepted, statuses = read_ledger(results / "ledger.jsonl")
    with ApiClient(args.host, args.token) as client:
        drain = client.drain(accepted, timeout=args.drain_timeout, cancel_queued=args.cancel_queued_at_end)
    summary = summarise(args, results, accepted, statuses, drain, read_stats(results / "locust_stats.csv"))
    document = asdict(summary) | {"server_errors": summary.server_errors, "ok": summary.ok}
    (results / "summary.json").write_text(json.dumps(document, indent=2))
    print(render(summary))
    return 0 if summary.ok and completed.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
