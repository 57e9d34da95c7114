"""Locust load test of the job API: submit → poll status until terminal → result → download.

Users:

* ``JobUser`` runs whole jobs the way a RunComfy client does and reports each job's end-to-end time as its
  own Locust entry (request type ``JOB``, name ``job end-to-end``; a failed, cancelled or timed-out job is
  a failure of that entry).
* ``StatusPollerUser`` is the cheap, frequent traffic of many clients watching their jobs: status and
  result of jobs other users submitted, ``/healthz``, and unknown ids (a 404 is the right answer there).

URLs carrying an id are grouped (``/v1/requests/[id]/status``), so the statistics have one row per
endpoint rather than one per job. ``--modes`` mixes the job kinds (portrait, two speakers, dubbing:
``image:8,multi:1,video:1``), each on its own submit entry. The mix (``--mix``), the number of job users
(``--job-users``) and the total job budget (``--max-jobs``) are Locust options, as are the token and the
inputs; ``StepLoadShape`` raises the user count to ``--users`` in ``--shape-steps`` equal steps over
``--run-time``.

``--ledger FILE`` appends one JSON line per accepted job, per terminal state seen and, at the end, the
count of every HTTP status: ``python -m loadtest.run`` follows the accepted ids after the run from it, so a
job accepted near the end is still accounted for.

Run it from the repository root (the file imports the ``loadtest`` package):
``python -m locust -f loadtest/locustfile.py --host http://127.0.0.1:8000 --token local-dev-token`` for the
web UI, or headless through ``python -m loadtest.run``.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import gevent
from locust import HttpUser, LoadTestShape, between, events, task
from locust.env import Environment

from loadtest.client import (
    DEFAULT_TOKEN,
    EXAMPLE_AUDIO,
    EXAMPLE_IMAGE,
    SMALLEST_SIZE,
    TERMINAL,
    dubbing_body,
    job_body,
    mode_cycle,
    parse_modes,
    two_speaker_body,
)
from loadtest.entries import (
    DOWNLOAD_NAME,
    HEALTH_NAME,
    JOB_NAME,
    JOB_TYPE,
    MIXES,
    RESULT_NAME,
    STATUS_NAME,
    SUBMIT_NAMES,
    UNKNOWN_NAME,
    job_user_count,
)
from loadtest.hostile_media import counting_video, data_uri

logger = logging.getLogger(__name__)

MAX_RETRY_AFTER_S = 10.0


class JobFailed(Exception):
    """A job ended without a video (failed, cancelled, timed out): a failure of the end-to-end entry."""


@events.init_command_line_parser.add_listener
def _add_arguments(parser: Any) -> None:
    group = parser.add_argument_group("InfiniteTalk job API")
    group.add_argument("--token", default=DEFAULT_TOKEN, env_var="INFINITETALK_TOKEN", help="bearer token")
    group.add_argument("--image", default=EXAMPLE_IMAGE, help="284_image: URL, data: URI, file id or example")
    group.add_argument("--audio", default=EXAMPLE_AUDIO, help="125_audio: URL, data: URI, file id or example")
    group.add_argument(
        "--video",
        default="",
        help="video-to-video source: URL, data: URI or file id (default: a generated clip)",
    )
    group.add_argument(
        "--modes",
        default="image",
        help="job modes and their weights, e.g. image:8,multi:1,video:1 (portrait, two speakers, dubbing)",
    )
    group.add_argument("--size", default=SMALLEST_SIZE, help="245_valuex246_value of every job")
    group.add_argument("--frames", type=int, default=125, help="270_value of every job (125 or 250)")
    group.add_argument("--job-steps", type=int, default=6, help="128_steps of every job (6..20)")
    group.add_argument("--mix", choices=sorted(MIXES), default="status-heavy", help="job users : pollers")
    group.add_argument("--job-users", type=int, default=0, help="fixed number of job users (0: by --mix)")
    group.add_argument("--max-jobs", type=int, default=0, help="jobs to submit in all (0: no limit)")
    group.add_argument("--poll-interval", type=float, default=1.0, help="seconds between status polls")
    group.add_argument("--job-timeout", type=float, default=900.0, help="give up on one job after this")
    group.add_argument("--no-download", action="store_true", help="skip downloading finished videos")
    group.add_argument("--shape-steps", type=int, default=1, help="steps of the load shape (1: constant)")
    group.add_argument("--ledger", default="", help="JSON-lines file of accepted ids and status counts")


class _Ledger:
    """Append-only record of what the run accepted, shared by the users of this process."""

    def __init__(self) -> None:
        self.path: Path | None = None
        self.statuses: Counter[int] = Counter()
        self.accepted: list[str] = []
        self.jobs_started = 0
        self._lock = threading.Lock()

    def open(self, path: str) -> None:
        self.path = Path(path) if path else None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, **entry: Any) -> None:
        if self.path is None:
            return
        with self._lock, self.path.open("a") as file:
            file.write(json.dumps({"t": time.time(), **entry}) + "\n")

    def take_job(self, limit: int) -> bool:
        """Reserve one job of the ``--max-jobs`` budget."""
        with self._lock:
            if limit and self.jobs_started >= limit:
                return False
            self.jobs_started += 1
            return True

    def give_back_job(self) -> None:
        with self._lock:
            self.jobs_started -= 1


LEDGER = _Ledger()


@events.init.add_listener
def _configure(environment: Environment, **_: Any) -> None:
    options = environment.parsed_options
    if options is None:  # library use without a command line: the class defaults stand
        return
    job_weight, poller_weight = MIXES[options.mix]
    JobUser.weight, StatusPollerUser.weight = job_weight, poller_weight
    JobUser.fixed_count = options.job_users or job_user_count(options.mix, options.num_users or 1)
    JobUser.modes = mode_cycle(parse_modes(options.modes))
    LEDGER.open(options.ledger)


@events.request.add_listener
def _count_status(request_type: str, name: str, response: Any = None, **_: Any) -> None:
    if request_type == JOB_TYPE:
        return
    status = int(getattr(response, "status_code", 0) or 0)
    if name == UNKNOWN_NAME and status == 404:
        return  # the answer the probe wants, not an API error
    LEDGER.statuses[status] += 1


@events.quitting.add_listener
def _write_counts(environment: Environment, **_: Any) -> None:
    LEDGER.write(event="statuses", counts={str(k): v for k, v in sorted(LEDGER.statuses.items())})


def _error_code(response: Any) -> str:
    try:
        return str(response.json()["error"]["code"])
    except Exception:
        return "no error body"


def _retry_after(response: Any) -> float:
    try:
        return min(float(response.headers.get("Retry-After", "1")), MAX_RETRY_AFTER_S)
    except ValueError:
        return 1.0


class _ApiUser(HttpUser):
    abstract = True

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.options = options
        token = options.token if options is not None else DEFAULT_TOKEN
        self.client.headers["Authorization"] = f"Bearer {token}"


class JobUser(_ApiUser):
    """One whole job at a time: submit, poll to the end, fetch the result and the video."""

    weight = 1
    wait_time = between(0.5, 1.5)
    #: ``--modes``: which job mode comes next, shared by every job user (``loadtest.client.mode_cycle``).
    modes: ClassVar[Iterator[str]] = itertools.repeat("image")

    def _job(self) -> tuple[str, dict[str, Any]]:
        """The next job of the ``--modes`` mix: its submit path and body."""
        options = self.options
        mode = next(self.modes)
        seed = random.randrange(2**31)
        if mode == "multi":
            body = two_speaker_body(
                image=options.image,
                left_audio=options.audio,
                right_audio=options.audio,
                resolution=options.size,
                frames=options.frames,
                steps=options.job_steps,
                seed=seed,
            )
        elif mode == "video":
            video = options.video or data_uri(counting_video(seconds=2.0), "video/mp4")
            body = dubbing_body(
                video=video, audio=options.audio, frames=options.frames, steps=options.job_steps, seed=seed
            )
        else:
            body = job_body(
                image=options.image,
                audio=options.audio,
                size=options.size,
                frames=options.frames,
                steps=options.job_steps,
                seed=seed,
            )
        return SUBMIT_NAMES[mode], body

    @task
    def run_job(self) -> None:
        if not LEDGER.take_job(self.options.max_jobs):
            gevent.sleep(5.0)  # budget spent: stay idle until the run ends
            return
        started = time.perf_counter()
        request_id = self._submit()
        if request_id is None:
            LEDGER.give_back_job()
            return
        status = self._poll_until_terminal(request_id, started)
        if status == "completed":
            self._fetch_result(request_id)
        elapsed_ms = (time.perf_counter() - started) * 1000
        self.environment.events.request.fire(
            request_type=JOB_TYPE,
            name=JOB_NAME,
            response_time=elapsed_ms,
            response_length=0,
            response=None,
            context={"request_id": request_id},
            exception=None if status == "completed" else JobFailed(f"job ended {status}"),
        )

    def _submit(self) -> str | None:
        path, body = self._job()
        with self.client.post(path, json=body, name=path, catch_response=True) as resp:
            if resp.status_code == 202:
                resp.success()
                request_id = resp.json()["request_id"]
                LEDGER.accepted.append(request_id)
                LEDGER.write(event="accepted", id=request_id)
                return request_id
            resp.failure(f"HTTP {resp.status_code} {_error_code(resp)}")
            if resp.status_code in (429, 503):
                gevent.sleep(_retry_after(resp))
            return None

    def _poll_until_terminal(self, request_id: str, started: float) -> str:
        status = "unknown"
        while time.perf_counter() - started < self.options.job_timeout:
            gevent.sleep(self.options.poll_interval)
            path = f"/v1/requests/{request_id}/status"
            with self.client.get(path, name=STATUS_NAME, catch_response=True) as resp:
                if resp.status_code != 200:
                    resp.failure(f"HTTP {resp.status_code} {_error_code(resp)}")
                    continue
                resp.success()
                status = resp.json()["status"]
            if status in TERMINAL:
                LEDGER.write(event="terminal", id=request_id, status=status)
                return status
        return f"timed out ({status})"

    def _fetch_result(self, request_id: str) -> None:
        path = f"/v1/requests/{request_id}/result"
        with self.client.get(path, name=RESULT_NAME, catch_response=True) as resp:
            video = (resp.json().get("output") or {}).get("video") if resp.status_code == 200 else None
            if not video:
                resp.failure(f"HTTP {resp.status_code}: completed job without output.video")
                return
            resp.success()
        if self.options.no_download:
            return
        with self.client.get(video, name=DOWNLOAD_NAME, catch_response=True) as resp:
            if resp.status_code != 200 or resp.content[4:8] != b"ftyp":
                resp.failure(f"HTTP {resp.status_code}: not an MP4 ({len(resp.content)} bytes)")
            else:
                resp.success()


class StatusPollerUser(_ApiUser):
    """Many clients watching their jobs: frequent, cheap reads."""

    weight = 4
    wait_time = between(0.2, 0.6)

    def _known_id(self) -> str | None:
        return random.choice(LEDGER.accepted) if LEDGER.accepted else None

    @task(6)
    def status(self) -> None:
        request_id = self._known_id()
        if request_id is None:
            self.health()
            return
        self.client.get(f"/v1/requests/{request_id}/status", name=STATUS_NAME)

    @task(2)
    def result(self) -> None:
        request_id = self._known_id()
        if request_id is None:
            self.health()
            return
        self.client.get(f"/v1/requests/{request_id}/result", name=RESULT_NAME)

    @task(1)
    def health(self) -> None:
        self.client.get("/healthz", name=HEALTH_NAME)

    @task(1)
    def unknown(self) -> None:
        path = f"/v1/requests/{random.getrandbits(128):032x}/status"
        with self.client.get(path, name=UNKNOWN_NAME, catch_response=True) as resp:
            if resp.status_code == 404:
                resp.success()
            else:
                resp.failure(f"HTTP {resp.status_code} for an unknown id (expected 404)")


class StepLoadShape(LoadTestShape):
    """``--users`` reached in ``--shape-steps`` equal steps over ``--run-time`` (one step: constant load)."""

    use_common_options = True

    def tick(self) -> tuple[int, float] | None:
        options = self.runner.environment.parsed_options
        users = max(1, options.num_users or 1)
        rate = options.spawn_rate or users
        steps = max(1, options.shape_steps)
        run_time = options.run_time
        elapsed = self.get_run_time()
        if run_time:
            if elapsed >= run_time:
                return None
            step = min(steps - 1, int(elapsed / (run_time / steps)))
        else:
            step = steps - 1
        return max(1, math.ceil(users * (step + 1) / steps)), rate
