"""Scripted, bounded fault injection against a running local stack, with an account of every job.

Scenarios (each submits a few of the cheapest jobs, injects one fault, measures recovery, then follows
every accepted job until it is terminal or the scenario's deadline passes):

* ``kill-sampler``: SIGKILL the sampler replica while a job runs (one more job waits in the queue). The
  running job's lease expires, the reaper requeues it, Serve starts a new replica, and both jobs finish.
* ``kill-ingress``: SIGKILL the HTTP ingress while a job runs; measures how long the API is unreachable.
* ``kill-audio-encoder``: SIGKILL the wav2vec2 replica just as a job starts, so the sampler's call to it
  meets a dead replica.
* ``restart-redis``: stop the embedded Redis (SHUTDOWN flushes the AOF) with one job running and one queued,
  start it again on the same directory and port; the records and queue survive through the AOF.
* ``fill-queue``: submit until the queue bound answers 429 (with ``Retry-After``), then cancel every job
  (the one already running ends cancelled at its next step).

Each reports jobs submitted vs terminal with their states and attempts, the HTTP errors a background
prober saw while the fault lasted, the recovery time, and any completed job whose result is not exactly
one video (``duplicates``: a second output object, such as another run's video beside the one shown, a
result that changes between reads, or an undecodable MP4), or any other job that left an output object.

Replica processes are found by their process title (``ServeReplica:infinitetalk:Sampler``), only among
the descendants of ``--root-pid`` when given (the ``python -m serve up`` process), so a battery never
touches another stack's replicas. CLI:
``python -m loadtest.faults --host http://127.0.0.1:8000 --config configs/local.yaml all``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
import yaml

from loadtest.client import DEFAULT_TOKEN, ApiClient, JobOutcome, job_body
from loadtest.stack import APP_NAME, find_replicas, is_constructed
from serve.client import ApiError, ResultResponse, RetryLater
from serve.config import AppConfig
from serve.jobs.embedded_redis import EmbeddedRedis

logger = logging.getLogger(__name__)

PROBE_INTERVAL_S = 0.25


class FaultError(RuntimeError):
    """The scenario could not inject its fault (no replica to kill, a job that never started)."""


@dataclass(frozen=True)
class FaultTarget:
    """Where the stack is and what it is made of: API, Redis data directory and port, storage root."""

    base_url: str
    token: str
    redis_dir: Path
    redis_port: int
    storage_root: Path | None
    max_queued: int
    root_pid: int | None = None
    app: str = APP_NAME
    expected_frames: int = 125
    expected_size: tuple[int, int] = (480, 480)

    @classmethod
    def from_config(
        cls, config_path: Path, base_url: str, token: str = DEFAULT_TOKEN, root_pid: int | None = None
    ) -> FaultTarget:
        """Read Redis, storage and queue settings from a Serve config (relative paths: from the cwd)."""
        document = yaml.safe_load(config_path.read_text())
        app = document["applications"][0]
        config = AppConfig.model_validate(app.get("args", {})).with_absolute_paths(Path.cwd())
        storage = Path(config.storage.root) if config.storage.kind == "local" else None
        return cls(
            base_url=base_url,
            token=token,
            redis_dir=Path(config.redis.embedded_dir),
            redis_port=config.redis.embedded_port,
            storage_root=storage,
            max_queued=config.queue.max_queued,
            root_pid=root_pid,
            app=app["name"],
        )


@dataclass
class FaultReport:
    scenario: str
    submitted: int = 0
    accepted: list[str] = field(default_factory=list)
    states: dict[str, str] = field(default_factory=dict)
    attempts: dict[str, int | None] = field(default_factory=dict)
    error_codes: dict[str, str] = field(default_factory=dict)
    lost: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    recovery_seconds: float | None = None
    recovery_measure: str = ""
    replica_restart_seconds: float | None = None
    total_seconds: float = 0.0
    api_errors: dict[str, int] = field(default_factory=dict)
    killed_pids: list[int] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)  # scenario-specific facts
    notes: list[str] = field(default_factory=list)

    @property
    def state_counts(self) -> dict[str, int]:
        return dict(Counter(self.states.values()))

    @property
    def ok(self) -> bool:
        """Every accepted job terminal, no duplicate result, and never a 500 from the API (503 is its answer).

        A ``front 5xx`` (the proxy answering for a replica that died under the request) counts, not fails:
        a request in flight to a SIGKILLed process cannot be answered by it.
        """
        return not self.lost and not self.duplicates and "500" not in self.api_errors

    def render(self) -> str:
        states = ", ".join(f"{state} {n}" for state, n in sorted(self.state_counts.items())) or "none"
        errors = ", ".join(f"{status}: {n}" for status, n in self.api_errors.items()) or "none"
        attempts = ", ".join(f"{rid[:8]}={n}" for rid, n in self.attempts.items())
        recovery = "-" if self.recovery_seconds is None else f"{self.recovery_seconds:.1f} s"
        restart = "-" if self.replica_restart_seconds is None else f"{self.replica_restart_seconds:.1f} s"
        lines = [
            f"[{self.scenario}] {'ok' if self.ok else 'NOT OK'} in {self.total_seconds:.0f} s",
            f"  jobs: submitted {self.submitted}, accepted {len(self.accepted)}, "
            f"terminal {len(self.accepted) - len(self.lost)} ({states}), lost {len(self.lost)}",
            f"  attempts: {attempts or '-'}",
            f"  recovery: {recovery} ({self.recovery_measure}); replica restart: {restart}",
            f"  API errors while the fault lasted: {errors}",
        ]
        if self.error_codes:
            lines.append(f"  failure codes: {self.error_codes}")
        lines += [f"  DUPLICATE: {problem}" for problem in self.duplicates]
        lines += [f"  LOST: {rid}" for rid in self.lost]
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


class Prober(threading.Thread):
    """Polls ``/healthz`` and the status of some jobs a few times a second, counting error answers.

    An answer counts under its status code (``0`` when the connection failed). A 5xx whose body is not the
    API's JSON error envelope came from the HTTP front, not from the API: it counts as ``front <code>``.
    """

    def __init__(self, target: FaultTarget, request_ids: list[str]) -> None:
        super().__init__(name="fault-prober", daemon=True)
        self._client = ApiClient(target.base_url, target.token, timeout=5.0)
        self._ids = request_ids
        self._stop_event = threading.Event()
        self.errors: Counter[str] = Counter()

    def run(self) -> None:
        while not self._stop_event.wait(PROBE_INTERVAL_S):
            self._probe("/healthz")
            for rid in list(self._ids):
                self._probe(f"/v1/requests/{rid}/status")

    def _probe(self, path: str) -> None:
        try:
            response = self._client.http.get(path)
        except httpx.HTTPError:
            self.errors["0"] += 1
            return
        if response.status_code >= 400:
            self.errors[error_label(response)] += 1

    def stop(self) -> None:
        self._stop_event.set()
        self.join(10)
        self._client.close()


def error_label(response: httpx.Response) -> str:
    """``"503"`` for an answer of the API; ``"front 500"`` for a 5xx the HTTP front made up itself."""
    status = str(response.status_code)
    if response.status_code < 500:
        return status
    try:
        body = response.json()
    except ValueError:
        return f"front {status}"
    from_api = isinstance(body, dict) and isinstance(body.get("error"), dict) and "code" in body["error"]
    return status if from_api else f"front {status}"


# -- process handles -----------------------------------------------------------------------------------------


def kill_replicas(target: FaultTarget, deployment: str) -> list[int]:
    """SIGKILL every replica process of ``deployment``; their pids."""
    processes = find_replicas(deployment, root_pid=target.root_pid, app=target.app)
    if not processes:
        raise FaultError(f"no {deployment} replica process found (root pid {target.root_pid})")
    if target.root_pid is None and len({process.ppid() for process in processes}) > 1:
        # Replicas under different raylets: several stacks run here, and a guess could hit the wrong one.
        raise FaultError(f"{deployment} replicas of several Ray clusters found; pass --root-pid")
    pids = []
    for process in processes:
        os.kill(process.pid, signal.SIGKILL)
        pids.append(process.pid)
    logger.info("killed %s replica(s) %s", deployment, pids)
    return pids


def wait_new_replica(target: FaultTarget, deployment: str, old: list[int], timeout: float) -> float | None:
    """Seconds until a replica of ``deployment`` other than ``old`` has finished its constructor."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        for process in find_replicas(deployment, root_pid=target.root_pid, app=target.app):
            if process.pid not in old and is_constructed(process):
                return time.monotonic() - started
        time.sleep(0.5)
    return None


def _embedded_redis(target: FaultTarget) -> EmbeddedRedis:
    return EmbeddedRedis(target.redis_dir, port=target.redis_port)


# -- checks --------------------------------------------------------------------------------------------------


def _storage_key(video_url: str) -> str:
    """A download link is ``/v1/`` and the object's key (``outputs/<tenant>/...``)."""
    path = unquote(urlsplit(video_url).path)
    prefix = "/v1/"
    return path[len(prefix) :] if path.startswith(prefix) else path


def check_results(client: ApiClient, target: FaultTarget, outcomes: dict[str, JobOutcome]) -> list[str]:
    """Problems with the visible results: each completed job must show one stable, decodable video."""
    problems = []
    for rid, outcome in outcomes.items():
        try:
            one, two = client.result(rid), client.result(rid)
        except ApiError as error:
            problems.append(f"{rid}: result answered {error}")
            continue
        if outcome.status != "completed":
            if one.output is not None:
                problems.append(f"{rid}: {outcome.status} but shows output {one.output.video}")
            elif target.storage_root is not None and (left := _job_objects(target.storage_root, "*", rid)):
                problems.append(f"{rid}: {outcome.status} but its output folder holds {left}")
            continue
        if one.output is None or two.output is None:
            problems.append(f"{rid}: completed without an output")
            continue
        if _storage_key(one.output.video) != _storage_key(two.output.video):
            problems.append(f"{rid}: the output changes between reads")
            continue
        if one.finished_at != two.finished_at:
            problems.append(f"{rid}: finished_at changes between reads")
        if target.storage_root is not None:
            problems += _check_stored_output(target.storage_root, rid, _storage_key(one.output.video))
        problems += _check_video(client, one, target)
    return problems


def _job_objects(storage_root: Path, tenant: str, rid: str) -> list[str]:
    """Storage keys of every file in a job's output folder (every run's subfolder, temp files included);
    ``tenant`` may be ``*``."""
    return sorted(
        path.relative_to(storage_root).as_posix()
        for folder in storage_root.glob(f"outputs/{tenant}/{rid}")
        for path in folder.rglob("*")
        if path.is_file()
    )


def _check_stored_output(storage_root: Path, rid: str, key: str) -> list[str]:
    """The video's key names this job and one run of it (``outputs/<tenant>/<id>/<run>/video.mp4``, each run
    writes its own), and that object is the only one in the job's output folder: no other run's video."""
    parts = key.split("/")
    if len(parts) != 5 or parts[0] != "outputs" or parts[2] != rid or parts[4] != "video.mp4":
        return [f"{rid}: the video's storage key {key!r} is not outputs/<tenant>/{rid}/<run>/video.mp4"]
    found = _job_objects(storage_root, parts[1], rid)
    if found != [key]:
        return [f"{rid}: the job's output folder holds {found}, expected exactly [{key!r}]"]
    return []


def _check_video(client: ApiClient, result: ResultResponse, target: FaultTarget) -> list[str]:
    import av

    rid = result.request_id
    with tempfile.TemporaryDirectory() as folder:
        try:
            video = client.download(result, Path(folder) / "video.mp4")
        except ApiError as error:
            return [f"{rid}: download answered {error}"]
        try:
            with av.open(str(video)) as container:
                stream = container.streams.video[0]
                frames = sum(1 for _ in container.decode(stream))
                size = (stream.codec_context.width, stream.codec_context.height)
        except (av.error.FFmpegError, IndexError) as error:
            return [f"{rid}: the video does not decode ({error})"]
    if frames != target.expected_frames or size != target.expected_size:
        expected = f"{target.expected_frames} frames of {target.expected_size}"
        return [f"{rid}: the video has {frames} frames of {size}, expected {expected}"]
    return []


# -- scenarios -----------------------------------------------------------------------------------------------


class _Run:
    """Shared bookkeeping of one scenario: submissions, the prober, the drain and the report."""

    def __init__(self, target: FaultTarget, scenario: str, timeout: float) -> None:
        self.target = target
        self.client = ApiClient(target.base_url, target.token)
        self.report = FaultReport(scenario=scenario)
        self.started = time.monotonic()
        self.deadline = self.started + timeout
        self.prober: Prober | None = None

    def remaining(self) -> float:
        return max(1.0, self.deadline - time.monotonic())

    def submit(self) -> str | None:
        self.report.submitted += 1
        try:
            rid = self.client.submit_accepted(job_body(seed=len(self.report.accepted) + int(time.time())))
        except ApiError:
            return None
        except httpx.HTTPError as error:
            self.report.notes.append(f"submit got no response ({type(error).__name__})")
            return None
        self.report.accepted.append(rid)
        return rid

    def start_prober(self) -> None:
        self.prober = Prober(self.target, self.report.accepted[:2])
        self.prober.start()

    def stop_prober(self) -> None:
        if self.prober is not None:
            self.prober.stop()
            self.report.api_errors = dict(sorted(self.prober.errors.items()))

    def finish(self, *, cancel_queued: bool = False) -> FaultReport:
        self.stop_prober()
        drain = self.client.drain(self.report.accepted, timeout=self.remaining(), cancel_queued=cancel_queued)
        report = self.report
        report.states = {rid: outcome.status for rid, outcome in drain.outcomes.items()}
        report.attempts = {rid: outcome.attempt for rid, outcome in drain.outcomes.items()}
        report.error_codes = {rid: o.error_code for rid, o in drain.outcomes.items() if o.error_code}
        report.lost = drain.lost
        terminal = {rid: o for rid, o in drain.outcomes.items() if o.terminal}
        report.duplicates = check_results(self.client, self.target, terminal)
        report.total_seconds = round(time.monotonic() - self.started, 1)
        self.client.close()
        return report


def kill_sampler(target: FaultTarget, timeout: float = 420.0) -> FaultReport:
    run = _Run(target, "kill-sampler", timeout)
    running, queued = run.submit(), run.submit()
    if running is None or queued is None:
        raise FaultError("the stack did not accept the scenario's jobs")
    run.client.wait_until(running, {"in_progress"}, timeout=run.remaining())
    time.sleep(2.0)  # inside the generation, past the claim
    run.start_prober()
    run.report.killed_pids = kill_replicas(target, "Sampler")
    killed = time.monotonic()
    run.report.replica_restart_seconds = wait_new_replica(target, "Sampler", run.report.killed_pids, 240)
    # Recovery: the killed job runs again (a new attempt) or is over.
    while time.monotonic() < run.deadline:
        outcome = run.client.outcome(running)
        if isinstance(outcome, JobOutcome) and (
            outcome.terminal or (outcome.status == "in_progress" and (outcome.attempt or 0) >= 2)
        ):
            run.report.recovery_seconds = round(time.monotonic() - killed, 1)
            break
        time.sleep(0.5)
    run.report.recovery_measure = "kill → the killed job running again on a new attempt"
    return run.finish()


def kill_ingress(target: FaultTarget, timeout: float = 300.0) -> FaultReport:
    run = _Run(target, "kill-ingress", timeout)
    running = run.submit()
    if running is None:
        raise FaultError("the stack did not accept the scenario's job")
    run.client.wait_until(running, {"in_progress"}, timeout=run.remaining())
    run.start_prober()
    time.sleep(1.0)
    killed = time.monotonic()
    run.report.killed_pids = kill_replicas(target, "Ingress")
    run.report.replica_restart_seconds = wait_new_replica(target, "Ingress", run.report.killed_pids, 240)
    while time.monotonic() < run.deadline and not run.client.healthy():
        time.sleep(0.25)
    run.report.recovery_seconds = round(time.monotonic() - killed, 1)
    run.report.recovery_measure = "kill → /healthz answers 200 again"
    after = run.submit()  # the new ingress accepts work; cancelled below if still queued, to stay bounded
    if after is None:
        run.report.notes.append("a submit right after recovery was not accepted")
    return run.finish(cancel_queued=True)


def kill_audio_encoder(target: FaultTarget, timeout: float = 360.0) -> FaultReport:
    run = _Run(target, "kill-audio-encoder", timeout)
    # The sampler must be idle, so the job starts (and calls the encoder) right after it is submitted.
    run.start_prober()
    run.report.killed_pids = kill_replicas(target, "AudioEncoder")
    killed = time.monotonic()
    job = run.submit()
    if job is None:
        raise FaultError("the stack did not accept the scenario's job")
    run.report.replica_restart_seconds = wait_new_replica(target, "AudioEncoder", run.report.killed_pids, 240)
    outcome = run.client.wait_until(job, {"completed", "failed", "cancelled"}, timeout=run.remaining())
    run.report.recovery_seconds = round(time.monotonic() - killed, 1)
    run.report.recovery_measure = f"kill → the job submitted right after it {outcome.status}"
    return run.finish()


def restart_redis(target: FaultTarget, timeout: float = 360.0, downtime: float = 3.0) -> FaultReport:
    server = _embedded_redis(target).start()
    if not server.attached:  # nothing was running there: this stack does not use the embedded Redis
        server.stop()
        raise FaultError(f"no embedded Redis was serving {target.redis_dir} on port {target.redis_port}")
    run = _Run(target, "restart-redis", timeout)
    running, queued = run.submit(), run.submit()
    if running is None or queued is None:
        raise FaultError("the stack did not accept the scenario's jobs")
    run.client.wait_until(running, {"in_progress"}, timeout=run.remaining())
    run.start_prober()
    time.sleep(1.0)
    stopped = time.monotonic()
    server.stop()  # SHUTDOWN: the AOF is flushed, then the server exits
    time.sleep(downtime)
    _embedded_redis(target).start()  # same directory and port: reloads the AOF
    run.report.notes.append(f"Redis down for {time.monotonic() - stopped:.1f} s")
    while time.monotonic() < run.deadline and not run.client.healthy():
        time.sleep(0.25)
    run.report.recovery_seconds = round(time.monotonic() - stopped, 1)
    run.report.recovery_measure = "Redis stop → /healthz answers 200 again"
    return run.finish()


def fill_queue(target: FaultTarget, timeout: float = 300.0) -> FaultReport:
    run = _Run(target, "fill-queue", timeout)
    refused: RetryLater | None = None
    for _ in range(target.max_queued + 5):
        run.report.submitted += 1
        try:
            run.report.accepted.append(run.client.submit_accepted(job_body(seed=run.report.submitted)))
        except RetryLater as error:
            refused = error
            break
        except ApiError as error:
            run.report.notes.append(f"submit answered {error}")
            break
    run.report.api_errors = {"429": 1} if refused is not None else {}
    if refused is None:
        run.report.notes.append(f"no 429 after {run.report.submitted} submits (bound {target.max_queued})")
    else:
        run.report.details = {
            "accepted_before_429": len(run.report.accepted),
            "status": refused.status,
            "code": refused.code,
            "retry_after": refused.retry_after,
        }
        run.report.notes.append(f"refused with 429 {run.report.details}")
    cancelled_at = time.monotonic()
    for rid in run.report.accepted:
        with contextlib.suppress(ApiError):  # 409: it ended meanwhile
            run.client.cancel(rid)
    # Recovery: the queue takes work again once it was emptied.
    while time.monotonic() < run.deadline:
        again = run.submit()
        if again is not None:
            run.report.recovery_seconds = round(time.monotonic() - cancelled_at, 1)
            break
        time.sleep(0.5)
    run.report.recovery_measure = "cancel of the queue → a submit is accepted again"
    return run.finish(cancel_queued=True)


SCENARIOS: dict[str, Callable[[FaultTarget], FaultReport]] = {
    "kill-sampler": kill_sampler,
    "kill-ingress": kill_ingress,
    "kill-audio-encoder": kill_audio_encoder,
    "restart-redis": restart_redis,
    "fill-queue": fill_queue,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.faults", description=__doc__.split("\n\n")[0])
    parser.add_argument("scenarios", nargs="+", choices=[*SCENARIOS, "all"])
    parser.add_argument("--host", default="http://127.0.0.1:8000")
    parser.add_argument("--token", default=os.environ.get("INFINITETALK_TOKEN", DEFAULT_TOKEN))
    parser.add_argument("--config", type=Path, default=Path("configs/local.yaml"))
    parser.add_argument("--root-pid", type=int, default=None, help="only touch replicas under this process")
    parser.add_argument("--json", type=Path, default=None, help="write the reports to this file")
    parser.add_argument("--redis-downtime", type=float, default=3.0, help="seconds Redis stays down")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    target = FaultTarget.from_config(args.config, args.host, args.token, args.root_pid)
    names = list(SCENARIOS) if "all" in args.scenarios else list(dict.fromkeys(args.scenarios))
    reports = []
    for name in names:
        if name == "restart-redis":
            report = restart_redis(target, downtime=args.redis_downtime)
        else:
            report = SCENARIOS[name](target)
        reports.append(report)
        print(report.render(), flush=True)
    if args.json is not None:
        document = [asdict(r) | {"ok": r.ok, "state_counts": r.state_counts} for r in reports]
        args.json.write_text(json.dumps(document, indent=2))
    return 0 if all(report.ok for report in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
