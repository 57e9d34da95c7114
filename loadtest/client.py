"""The load test's view of the job API: the package's own client (``serve.client``) plus a run's bookkeeping,
shared by the runner's drain, the fault battery, the benchmarks and the e2e tests.

Locust users make their own requests (through Locust's client, so they are measured); this client is for
the bookkeeping around a run: following every accepted job to a terminal state, cancelling what is still
queued, and checking that a completed job's result is one single, downloadable video.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
from pydantic import BaseModel

from serve.client import ApiError, Client, ImageToVideo, StatusResponse, TwoSpeakers, VideoToVideo

MODEL_PATH = "/v1/models/community/infinite-talk/image-to-video"
TWO_SPEAKER_PATH = "/v1/models/community/infinite-talk/fast/multi"
VIDEO_TO_VIDEO_PATH = "/v1/models/community/infinite-talk/video-to-video"
#: The job modes a load test can mix, by the name ``--modes`` gives them, and their submit paths.
MODE_PATHS = {"image": MODEL_PATH, "multi": TWO_SPEAKER_PATH, "video": VIDEO_TO_VIDEO_PATH}
REQUEST_MODELS: dict[str, type[BaseModel]] = {
    MODEL_PATH: ImageToVideo,
    TWO_SPEAKER_PATH: TwoSpeakers,
    VIDEO_TO_VIDEO_PATH: VideoToVideo,
}
EXAMPLE_IMAGE = "Runcomfy_example_1278_1.png"
EXAMPLE_AUDIO = "Runcomfy_example_1278_1.mp3"
DEFAULT_PROMPT = "a woman is talking and waving hands"
SMALLEST_SIZE = "480x480 (1:1)"
TERMINAL = frozenset({"completed", "failed", "cancelled"})
DEFAULT_TOKEN = "local-dev-token"


def job_body(
    *,
    image: str = EXAMPLE_IMAGE,
    audio: str = EXAMPLE_AUDIO,
    prompt: str = DEFAULT_PROMPT,
    size: str = SMALLEST_SIZE,
    frames: int = 125,
    steps: int = 6,
    seed: int | None = None,
) -> dict[str, Any]:
    """A submit body; the defaults make the cheapest job the API accepts (480x480, 125 frames, 6 steps)."""
    body: dict[str, Any] = {
        "241_positive_prompt": prompt,
        "284_image": image,
        "125_audio": audio,
        "245_valuex246_value": size,
        "270_value": frames,
        "128_steps": steps,
    }
    if seed is not None:
        body["128_seed"] = seed
    return body


def two_speaker_body(
    *,
    image: str = EXAMPLE_IMAGE,
    left_audio: str = EXAMPLE_AUDIO,
    right_audio: str = EXAMPLE_AUDIO,
    order: str = "meanwhile",
    resolution: str = SMALLEST_SIZE,
    frames: int = 125,
    steps: int = 6,
    seed: int | None = None,
) -> dict[str, Any]:
    """A ``/fast/multi`` body; the defaults are the cheapest two-speaker job."""
    body: dict[str, Any] = {
        "image": image,
        "left_audio": left_audio,
        "right_audio": right_audio,
        "order": order,
        "resolution": resolution,
        "frames": frames,
        "steps": steps,
    }
    return body if seed is None else {**body, "seed": seed}


def dubbing_body(
    *,
    video: str,
    audio: str = EXAMPLE_AUDIO,
    frames: int | None = 125,
    steps: int = 6,
    seed: int | None = None,
) -> dict[str, Any]:
    """A ``/video-to-video`` body (``frames=None``: as long as the speech)."""
    body: dict[str, Any] = {"video": video, "audio": audio, "steps": steps}
    if frames is not None:
        body["frames"] = frames
    return body if seed is None else {**body, "seed": seed}


def mode_cycle(weights: dict[str, int]) -> Iterator[str]:
    """The job modes in a fixed, repeating order, each as often per round as its weight: a short run still
    sees every mode (a random draw might not), and in the mix the weights ask for."""
    return itertools.cycle([mode for mode, weight in weights.items() for _ in range(weight)])


def parse_modes(text: str) -> dict[str, int]:
    """``image:8,multi:1,video:1`` → the weight of each job mode (a bare name weighs 1)."""
    weights: dict[str, int] = {}
    for part in filter(None, (piece.strip() for piece in text.split(","))):
        name, _, weight = part.partition(":")
        if name not in MODE_PATHS:
            raise ValueError(f"unknown job mode {name!r}; choose among {', '.join(MODE_PATHS)}")
        try:
            weights[name] = int(weight or 1)
        except ValueError:
            raise ValueError(f"the weight of {name!r} must be an integer, got {weight!r}") from None
        if weights[name] < 0:
            raise ValueError(f"the weight of {name!r} must not be negative")
    if not any(weights.values()):
        raise ValueError(f"no job mode with a positive weight in {text!r}")
    return weights


@dataclass
class JobOutcome:
    """What the API last said about one job."""

    request_id: str
    status: str = "unknown"
    attempt: int | None = None
    error_code: str | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @classmethod
    def from_status(cls, status: StatusResponse) -> JobOutcome:
        return cls(
            request_id=status.request_id,
            status=status.status,
            attempt=status.attempt,
            error_code=status.error.code if status.error is not None else None,
            created_at=status.created_at,
            started_at=status.started_at,
            finished_at=status.finished_at,
        )


@dataclass
class DrainReport:
    """The end state of a set of jobs after following them until a deadline."""

    outcomes: dict[str, JobOutcome]
    cancelled_by_drain: list[str] = field(default_factory=list)
    errors: Counter[int] = field(default_factory=Counter)  # HTTP status (0: no response) -> count
    seconds: float = 0.0

    def states(self) -> Counter[str]:
        return Counter(outcome.status for outcome in self.outcomes.values())

    @property
    def lost(self) -> list[str]:
        """Accepted ids that never reached a terminal state."""
        return sorted(rid for rid, outcome in self.outcomes.items() if not outcome.terminal)


class ApiClient(Client):
    """One tenant's ``serve.client.Client`` (the default token: the local stack's), plus the bookkeeping of a
    run and ``post_job``, which hands back the raw answer for code that counts or checks answers."""

    def __init__(self, base_url: str, token: str | None = DEFAULT_TOKEN, *, timeout: float = 30.0) -> None:
        super().__init__(base_url, token, timeout=timeout)

    def post_job(self, body: dict[str, Any] | None = None, *, path: str = MODEL_PATH) -> httpx.Response:
        """POST a job body to ``path`` as it is (default: the seed endpoint and its cheapest job)."""
        return self.http.post(path, json=job_body() if body is None else body)

    def healthy(self) -> bool:
        try:
            return self.http.get("/healthz", timeout=5.0).status_code == 200
        except httpx.HTTPError:
            return False

    def metric(self, name: str) -> float:
        """One unlabelled sample of the app's ``/metrics`` (``KeyError`` when absent)."""
        for line in self.http.get("/metrics", timeout=10.0).text.splitlines():
            if line.startswith(f"{name} "):
                return float(line.split()[1])
        raise KeyError(f"{name} is not in /metrics")

    def submit_accepted(self, body: dict[str, Any] | None = None, *, path: str = MODEL_PATH) -> str:
        """Submit a body (validated by the endpoint's own request model first); the request id, or the
        ``ApiError`` the server answered."""
        request = REQUEST_MODELS[path].model_validate(job_body() if body is None else body)
        return self.submit(request).request_id

    def outcome(self, request_id: str) -> JobOutcome | int:
        """The job's state, or the HTTP status (0: no response) when the API did not answer 200."""
        try:
            return JobOutcome.from_status(self.status(request_id))
        except ApiError as error:
            return error.status
        except httpx.HTTPError:
            return 0

    def wait_until(
        self, request_id: str, statuses: Iterable[str], timeout: float, poll: float = 0.5
    ) -> JobOutcome:
        """Poll until the job is in one of ``statuses``; raises ``TimeoutError`` with its last state."""
        wanted = frozenset(statuses)
        deadline = time.monotonic() + timeout
        last: JobOutcome | int = 0
        while time.monotonic() < deadline:
            last = self.outcome(request_id)
            if isinstance(last, JobOutcome) and last.status in wanted:
                return last
            time.sleep(poll)
        raise TimeoutError(f"job {request_id} not in {sorted(wanted)} after {timeout:.0f} s (last: {last})")

    def drain(
        self,
        request_ids: Iterable[str],
        *,
        timeout: float,
        poll: float = 1.0,
        cancel_queued: bool = False,
    ) -> DrainReport:
        """Follow every id until it is terminal or ``timeout`` passes.

        ``cancel_queued`` cancels the jobs still waiting in the queue first, so only the running ones have to
        finish before the deadline. A job that started meanwhile answers 202 and ends cancelled at its next
        step, so it counts as cancelled by the drain too; a 409 means it ended meanwhile.
        """
        started = time.monotonic()
        ids = list(dict.fromkeys(request_ids))
        report = DrainReport(outcomes={rid: JobOutcome(rid) for rid in ids})
        if cancel_queued:
            for rid in ids:
                current = self.outcome(rid)
                if isinstance(current, JobOutcome) and current.status == "in_queue":
                    with contextlib.suppress(ApiError):  # 409: it ended meanwhile
                        self.cancel(rid)
                        report.cancelled_by_drain.append(rid)
        deadline = started + timeout
        pending = set(ids)
        while pending and time.monotonic() < deadline:
            for rid in sorted(pending):
                current = self.outcome(rid)
                if isinstance(current, int):
                    report.errors[current] += 1
                    continue
                report.outcomes[rid] = current
                if current.terminal:
                    pending.discard(rid)
            if pending:
                time.sleep(poll)
        report.seconds = time.monotonic() - started
        return report
