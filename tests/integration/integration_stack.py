"""The integration stack's handles and helpers (fixtures in conftest.py build it once per session)."""

from __future__ import annotations

import contextlib
import copy
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml

from serve.jobs.records import JobRecord, JobStatus
from serve.jobs.runner import run_token
from serve.jobs.store import JobStore

ROOT = Path(__file__).resolve().parents[2]
LOCAL_CONFIG = ROOT / "configs" / "local.yaml"
GPU_CONFIG = ROOT / "configs" / "gpu.yaml"
APP_NAME = "infinitetalk"
TOKEN = "integration-token-alpha-0123456789"
OTHER_TOKEN = "integration-token-beta-0123456789"
TENANT = "alpha"
OTHER_TENANT = "beta"
# A tenant with a small queued cap of its own (the tokens file's ``tenants:`` section), for the fairness test.
GREEDY_TOKEN = "integration-token-greedy-0123456789"
GREEDY_TENANT = "greedy"
GREEDY_MAX_QUEUED = 3
SAMPLER_REPLICAS = 2
SAMPLER_GPUS = 0.5
LEASE_SECONDS = 6.0
MAX_ATTEMPTS = 3
# A run's time limit: three times the longest job the other tests run on a busy machine (about 30 s), so
# only a hung job reaches it.
MAX_RUN_SECONDS = 90.0
# Serve replaces a replica whose health check has not answered for this long; its default (30 s) is shorter
# than the fault tests' pauses (SIGSTOP), which would otherwise end in a replacement instead of a resume.
HEALTH_CHECK_TIMEOUT_S = 180.0
DEPLOY_TIMEOUT_S = 240.0
HEAL_TIMEOUT_S = 180.0
TERMINAL = frozenset({"completed", "failed", "cancelled"})

# The seed page's example body at the smallest size and length the API allows.
TINY_JOB = {
    "241_positive_prompt": "a woman is talking and waving hands",
    "284_image": "Runcomfy_example_1278_1.png",
    "125_audio": "Runcomfy_example_1278_1.mp3",
    "245_valuex246_value": "480x480 (1:1)",
    "270_value": 125,
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Observation:
    """One poll of a job: when (``time.time()``, as in the job record) and what its status said."""

    at: float
    status: str
    attempt: int
    progress: float | None
    queue_position: int | None

    def describe(self, since: float) -> str:
        return (
            f"t={self.at - since:6.1f}s {self.status:<11} attempt={self.attempt} "
            f"progress={self.progress} queue_position={self.queue_position}"
        )


def observe(status: dict[str, Any]) -> Observation:
    return Observation(
        at=time.time(),
        status=status["status"],
        attempt=status.get("attempt", 0),
        progress=status.get("progress"),
        queue_position=status.get("queue_position"),
    )


def timeline(history: list[Observation], since: float) -> str:
    """The observations where status or attempt changed, timed from ``since``: a long poll, readable."""
    changes: list[Observation] = []
    for observation in history:
        if not changes or (changes[-1].status, changes[-1].attempt) != (
            observation.status,
            observation.attempt,
        ):
            changes.append(observation)
    return "\n".join(f"  {o.describe(since)}" for o in changes)


@dataclass
class Replica:
    replica_id: str
    pid: int
    started_at: float  # time.time() when Serve started the replica


@dataclass
class Stack:
    """The running app and the handles a test needs: HTTP client, the job store, storage and the replicas."""

    base_url: str
    http: httpx.Client
    store: JobStore
    redis: redis.Redis  # the store's
    storage_root: Path
    submitted: list[str] = field(default_factory=list)

    # -- HTTP ------------------------------------------------------------------------------------------------

    def post_job(self, **fields: Any) -> httpx.Response:
        """Submit ``TINY_JOB`` with ``fields`` changed; the response, whatever it is."""
        return self.http.post(
            "/v1/models/community/infinite-talk/image-to-video", json={**TINY_JOB, **fields}
        )

    def submit(self, **fields: Any) -> str:
        response = self.post_job(**fields)
        assert response.status_code == 202, response.text
        request_id = response.json()["request_id"]
        self.submitted.append(request_id)
        return request_id

    def status(self, request_id: str) -> dict[str, Any]:
        response = self.http.get(f"/v1/requests/{request_id}/status")
        assert response.status_code == 200, response.text
        return response.json()

    def result(self, request_id: str) -> dict[str, Any]:
        response = self.http.get(f"/v1/requests/{request_id}/result")
        assert response.status_code == 200, response.text
        return response.json()

    def cancel(self, request_id: str) -> httpx.Response:
        return self.http.post(f"/v1/requests/{request_id}/cancel")

    def poll(
        self,
        request_id: str,
        until: Callable[[dict[str, Any]], bool],
        timeout_s: float,
        history: list[Observation] | None = None,
        interval_s: float = 0.5,
    ) -> dict[str, Any]:
        """Poll the status endpoint until ``until(status)``; past the deadline, fail showing the history."""
        history = [] if history is None else history
        deadline = time.monotonic() + timeout_s
        while True:
            status = self.status(request_id)
            history.append(observe(status))
            if until(status):
                return status
            if time.monotonic() > deadline:
                pytest.fail(
                    f"job {request_id}: condition not met within {timeout_s:.0f}s:\n"
                    + timeline(history, history[0].at)
                )
            time.sleep(interval_s)

    def wait_terminal(self, request_id: str, timeout_s: float = 240.0, **kwargs: Any) -> dict[str, Any]:
        return self.poll(request_id, lambda s: s["status"] in TERMINAL, timeout_s, **kwargs)

    @contextlib.contextmanager
    def as_tenant(self, token: str) -> Iterator[Stack]:
        """The same stack through another tenant's token (its jobs stay out of this stack's ``submitted``)."""
        http = httpx.Client(
            base_url=self.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30.0
        )
        try:
            yield replace(self, http=http, submitted=[])
        finally:
            http.close()

    # -- white-box views ---------------------------------------------------------------------------------

    def bring_run_deadline_to(self, request_id: str, deadline: float) -> None:
        """Fast-forward a running job towards its time limit: its run deadline becomes ``deadline`` (epoch
        seconds) where the claim wrote it, in the record and the reaper's index (``serve/jobs/keys.py``)."""
        self.redis.hset(self.store.keys.job(request_id), "run_deadline_at", repr(deadline))
        self.redis.zadd(self.store.keys.prefix + "deadlines", {request_id: deadline})

    def record(self, request_id: str) -> JobRecord:
        record = self.store.get(request_id)
        assert record is not None, f"no job record for {request_id}"
        return record

    def replica_of(self, request_id: str) -> str:
        """The id of the Sampler replica whose worker holds (or last held) the job's lease."""
        owner = self.record(request_id).lease_owner
        assert owner is not None, self.record(request_id)
        return owner.split(":")[0]

    def output_files(self, request_id: str, tenant: str = TENANT) -> list[str]:
        """The storage key of every file under the job's output folder (each run writes its own
        ``{run}/video.mp4`` there), hidden temp files included: a job shows one object or none."""
        folder = self.storage_root / "outputs" / tenant / request_id
        if not folder.is_dir():
            return []
        return sorted(p.relative_to(self.storage_root).as_posix() for p in folder.rglob("*") if p.is_file())

    def assert_single_output(self, request_id: str, tenant: str = TENANT) -> str:
        """The completed job's storage holds exactly the object its record names, written by the run that
        held the lease at the end (its run token is in the key); that key."""
        record = self.record(request_id)
        assert record.status is JobStatus.COMPLETED, record
        assert record.output_key is not None and record.lease_owner is not None, record
        expected = f"outputs/{tenant}/{request_id}/{run_token(record.lease_owner)}/video.mp4"
        assert record.output_key == expected, (record.output_key, expected)
        assert self.output_files(request_id, tenant) == [expected]
        return expected

    def counts(self) -> dict[str, int]:
        return {status.value: n for status, n in self.store.counts().items()}

    def wait_idle(self, timeout_s: float = 300.0) -> None:
        """No job queued or running (an earlier test's jobs ended): both Sampler replicas are free."""
        deadline = time.monotonic() + timeout_s
        while (counts := self.counts())["in_queue"] + counts["in_progress"]:
            if time.monotonic() > deadline:
                pytest.fail(f"the stack did not become idle within {timeout_s:.0f}s: {counts}")
            time.sleep(0.5)

    def replicas(self, deployment: str) -> list[Replica]:
        """The RUNNING replicas of a deployment, with their worker process ids."""
        details = serve_details()["applications"][APP_NAME]["deployments"][deployment]
        return [
            Replica(replica_id=r["replica_id"], pid=r["pid"], started_at=r["start_time_s"])
            for r in details["replicas"]
            if r["state"] == "RUNNING"
        ]

    def deployment_config(self, deployment: str) -> dict[str, Any]:
        return serve_details()["applications"][APP_NAME]["deployments"][deployment]["deployment_config"]

    def kill(self, replica: Replica) -> float:
        """SIGKILL the replica's process, as an OOM kill or a lost node would; returns ``time.time()``."""
        os.kill(replica.pid, signal.SIGKILL)
        return time.time()

    @contextlib.contextmanager
    def paused(self, replica: Replica) -> Iterator[float]:
        """SIGSTOP the replica's process (a hung driver call, a VM or container frozen, a long GC pause)
        for the block, which gets ``time.time()`` of the stop; SIGCONT at its end, whatever happens."""
        os.kill(replica.pid, signal.SIGSTOP)
        try:
            yield time.time()
        finally:
            os.kill(replica.pid, signal.SIGCONT)

    def wait_healthy(self, timeout_s: float = HEAL_TIMEOUT_S) -> None:
        """Every deployment at its target size and the API answering: the state a killed replica heals to."""
        expected = {"Ingress": 1, "AudioEncoder": 1, "Sampler": SAMPLER_REPLICAS}
        deadline = time.monotonic() + timeout_s
        state = "unknown"
        while time.monotonic() < deadline:
            state = app_state()
            if state == "RUNNING" and all(len(self.replicas(d)) == n for d, n in expected.items()):
                with contextlib.suppress(httpx.HTTPError):
                    if self.http.get("/healthz").status_code == 200:
                        return
            time.sleep(1.0)
        pytest.fail(f"the app did not become healthy within {timeout_s:.0f}s (last state: {state})")


def serve_details() -> dict[str, Any]:
    from ray.serve.context import _get_global_client

    return _get_global_client().get_serve_details()


def app_state() -> str:
    from ray import serve

    app = serve.status().applications.get(APP_NAME)
    return "absent" if app is None else app.status.value


def tokens_document() -> dict[str, Any]:
    """The tokens file: three tenants, one of them with its own queued cap."""
    return {
        "tokens": {TOKEN: TENANT, OTHER_TOKEN: OTHER_TENANT, GREEDY_TOKEN: GREEDY_TENANT},
        "tenants": {GREEDY_TENANT: {"max_queued": GREEDY_MAX_QUEUED}},
    }


def app_document(redis_url: str, tmp: Path, tokens_file: Path) -> dict[str, Any]:
    """configs/local.yaml's application with the test's args and deployment options: two Sampler replicas
    on half a GPU each, autoscaled by the production config's policy between fixed bounds."""
    document = yaml.safe_load(LOCAL_CONFIG.read_text())
    app = copy.deepcopy(document["applications"][0])
    args = app["args"]
    args["redis"] = {**args.get("redis", {}), "url": redis_url}
    args["storage"] = {**args.get("storage", {}), "kind": "local", "root": str(tmp / "storage")}
    args["auth"] = {"mode": "tokens", "tokens_file": str(tokens_file)}
    args["queue"] = {
        **args.get("queue", {}),
        "lease_seconds": LEASE_SECONDS,
        "max_attempts": MAX_ATTEMPTS,
        "maintenance_interval_seconds": 1.0,
        "drain_seconds": 5.0,
        "max_run_seconds": MAX_RUN_SECONDS,
    }
    for deployment in app["deployments"]:
        if deployment["name"] in ("Sampler", "AudioEncoder"):
            deployment["health_check_timeout_s"] = HEALTH_CHECK_TIMEOUT_S
        if deployment["name"] == "Sampler":
            deployment.pop("num_replicas", None)
            deployment["ray_actor_options"] = {
                **deployment.get("ray_actor_options", {}),
                "num_gpus": SAMPLER_GPUS,
            }
            deployment["autoscaling_config"] = {
                **deployment.get("autoscaling_config", {}),
                "min_replicas": SAMPLER_REPLICAS,
                "max_replicas": SAMPLER_REPLICAS,
                "policy": production_sampler_policy(),
            }
    return app


def production_sampler_policy() -> dict[str, Any]:
    """The Sampler's autoscaling policy as configs/gpu.yaml names it (local.yaml runs one fixed replica)."""
    document = yaml.safe_load(GPU_CONFIG.read_text())
    (sampler,) = [d for d in document["applications"][0]["deployments"] if d["name"] == "Sampler"]
    return sampler["autoscaling_config"]["policy"]
