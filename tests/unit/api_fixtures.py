"""Shared pieces of the API, runner, dispatcher and metrics tests.

Everything between the HTTP edge and the engine is real: a Redis server (the embedded one), the job store,
the dispatcher, local storage, the runner. Only the two ends are fakes: the message publisher (it records the
ids it was handed) and the engine (it writes a tiny real MP4, or fails the way the test needs).
"""

from __future__ import annotations

import io
import threading
import time
import uuid
import wave
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import redis
from PIL import Image
from redis.backoff import NoBackoff
from redis.retry import Retry

from pipeline.errors import PipelineError
from pipeline.video import write_mp4
from serve.api.routes import ApiContext, create_api
from serve.api.schemas import SubmitRequest
from serve.auth import Authenticator
from serve.config import AppConfig, FetchConfig, QueueConfig, StorageConfig
from serve.inputs.fetcher import Fetcher, FetchPolicy
from serve.inputs.references import InputResolver
from serve.jobs import JobRecord, JobStore
from serve.jobs.dispatch import Dispatcher
from serve.jobs.reader import JobReader
from serve.jobs.runner import EngineOutput, JobRunner, ProgressFn
from serve.metrics import MetricsRecorder
from serve.storage import LocalStorage, input_key

NAMESPACE = "apitest"
SIGNING_KEY = b"s" * 32
TOKENS = {"alpha-token-0123456789abcdef": "alpha", "beta-token-0123456789abcdef": "beta"}
ALPHA = {"Authorization": "Bearer alpha-token-0123456789abcdef"}
BETA = {"Authorization": "Bearer beta-token-0123456789abcdef"}
MAX_IMAGE_BYTES = 512 * 1024
MAX_AUDIO_BYTES = 1024 * 1024
RETENTION_SECONDS = 3600
URL_TTL_SECONDS = 600

# The body of the seed page's curl example, verbatim.
SEED_BODY = {
    "241_positive_prompt": "a woman is talking and waving hands",
    "284_image": "Runcomfy_example_1278_1.png",
    "125_audio": "Runcomfy_example_1278_1.mp3",
}


class Clock:
    """Shared by the store, dispatcher and storage. Starts at the real time: the routes compare ``expires_at``
    with ``time.time()``, so records must carry real-looking times."""

    def __init__(self, now: float | None = None) -> None:
        self.now = time.time() if now is None else now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakePublisher:
    """Stands in for the Celery task publisher: records every id it was asked to publish.

    While ``broken`` is set it raises instead, as a publisher whose broker is unreachable does.
    """

    def __init__(self) -> None:
        self.published: list[str] = []
        self.broken = False
        self._lock = threading.Lock()

    def __call__(self, request_id: str) -> None:
        if self.broken:
            raise ConnectionError("broker unreachable")
        with self._lock:
            self.published.append(request_id)


def redis_client(url: str) -> redis.Redis:
    """No retries and short timeouts, so a dead server is noticed at once."""
    return redis.Redis.from_url(
        url, socket_timeout=2.0, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0)
    )


# -- media -------------------------------------------------------------------------------------------------


def png_bytes(size: int = 32) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (200, 120, 90)).save(buffer, format="PNG")
    return buffer.getvalue()


def wav_bytes(seconds: float = 1.0, rate: int = 16000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    samples = (0.3 * np.sin(2 * np.pi * 220 * t) * 32767).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(samples.tobytes())
    return buffer.getvalue()


def write_tiny_mp4(path: Path, frames: int = 3, size: int = 16) -> None:
    rate = 16000
    write_mp4(
        path,
        np.zeros((frames, size, size, 3), dtype=np.uint8),
        np.zeros(rate * frames // 25, dtype=np.float32),
        rate,
    )


# -- fake engines: one per behaviour of the real one -----------------------------------------------------


@dataclass
class OkEngine:
    """Reports progress once and writes a tiny real MP4."""

    calls: int = 0
    seen: list[tuple[dict[str, Any], bytes, bytes]] = field(default_factory=list)

    def run(
        self, params: dict[str, Any], image: bytes, audio: bytes, out_path: Path, progress: ProgressFn
    ) -> EngineOutput:
        self.calls += 1
        self.seen.append((dict(params), image, audio))
        progress(0.5, 0.1)
        write_tiny_mp4(out_path)
        return EngineOutput(
            timings={
                "audio_encode": 0.02,
                "text_encode": 0.01,
                "sampling": 0.3,
                "vae_decode": 0.05,
                "mux": 0.01,
            },
            reproducibility={"seed": params["seed"], "output_size": f"{params['width']}x{params['height']}"},
        )


@dataclass
class FailingEngine:
    """Raises a pipeline error: the job's own fault, failed at once with the error's code."""

    error: PipelineError
    calls: int = 0

    def run(
        self, params: dict[str, Any], image: bytes, audio: bytes, out_path: Path, progress: ProgressFn
    ) -> EngineOutput:
        self.calls += 1
        raise self.error


@dataclass
class CrashingEngine:
    """Raises something unexpected (an OOM, a bug): the runner leaves the job to lease expiry."""

    calls: int = 0

    def run(
        self, params: dict[str, Any], image: bytes, audio: bytes, out_path: Path, progress: ProgressFn
    ) -> EngineOutput:
        self.calls += 1
        raise RuntimeError("CUDA out of memory at /secret/path/model.py:42")


class SlowEngine:
    """Reports ``fraction``/``eta`` until ``release`` is set (calling ``progress`` as the real sampler does
    every step, which is where the runner stops it), then writes the MP4."""

    def __init__(self, fraction: float = 0.25, eta: float = 30.0) -> None:
        self.fraction, self.eta = fraction, eta
        self.started = threading.Event()
        self.release = threading.Event()
        self.calls = 0
        self.finished = 0

    def run(
        self, params: dict[str, Any], image: bytes, audio: bytes, out_path: Path, progress: ProgressFn
    ) -> EngineOutput:
        self.calls += 1
        progress(self.fraction, self.eta)
        self.started.set()
        while not self.release.wait(0.01):
            progress(self.fraction, self.eta)
        progress(1.0, 0.0)
        write_tiny_mp4(out_path)
        self.finished += 1
        return EngineOutput(timings={"sampling": 0.5}, reproducibility={"seed": params["seed"]})


def run_in_thread(target: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    """Start ``target`` in a thread; its return value lands in the returned list."""
    outcome: list[Any] = []
    thread = threading.Thread(target=lambda: outcome.append(target()), daemon=True)
    thread.start()
    return thread, outcome


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


# -- the stack -------------------------------------------------------------------------------------------


@dataclass
class Stack:
    config: AppConfig
    redis: redis.Redis
    clock: Clock
    store: JobStore
    storage: LocalStorage
    publisher: FakePublisher
    dispatcher: Dispatcher
    metrics: MetricsRecorder
    context: ApiContext

    def app(self):
        return create_api(self.context)

    def record_finished(self, record: JobRecord) -> None:
        """What the sampler deployment does when a job ends."""
        self.metrics.record_job_finished(
            record.status, (record.finished_at or self.clock()) - record.created_at
        )
        self.metrics.record_stages(record.timings)

    def enqueue(self, tenant: str = "alpha", *, publish: bool = True) -> str:
        """A queued job as the submit route leaves it (inputs staged, record created, message published),
        without HTTP. ``publish=False``: as if the ingress died right after writing the record."""
        request_id = uuid.uuid4().hex
        inputs = {role: input_key(tenant, request_id, role) for role in ("image", "audio")}
        self.storage.put_bytes(inputs["image"], png_bytes(), "application/octet-stream")
        self.storage.put_bytes(inputs["audio"], wav_bytes(), "application/octet-stream")
        params = SubmitRequest.model_validate(SEED_BODY).to_generation_params().to_dict()
        self.dispatcher.mark_pending(request_id)
        self.store.create(
            JobRecord(
                request_id=request_id,
                tenant=tenant,
                params=params,
                inputs=inputs,
                timings={"fetch_inputs": 0.1},
            )
        )
        if publish:
            self.dispatcher.publish(request_id)
        return request_id

    def pending(self) -> list[str]:
        """Ids the dispatcher still holds as unpublished."""
        return [raw.decode() for raw in self.redis.zrange(self.dispatcher._pending, 0, -1)]

    def runner(self, engine: Any, replica_id: str = "replica-1") -> JobRunner:
        return JobRunner(
            self.store,
            self.storage,
            engine,
            replica_id=replica_id,
            republish=self.dispatcher.publish,
            on_finished=self.record_finished,
        )


def _url_of(client: redis.Redis) -> str:
    """The URL of a sync client, for the asynchronous reader of the same server."""
    kwargs = client.connection_pool.connection_kwargs
    return f"redis://{kwargs.get('host', '127.0.0.1')}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"


def build_stack(
    client: redis.Redis,
    root: Path,
    *,
    clock: Clock | None = None,
    max_queued: int = 50,
    lease_seconds: float = 60.0,
    max_attempts: int = 3,
    grace_seconds: float = 10.0,
    public_base_url: str | None = None,
    is_ready: Callable[[], bool] = lambda: True,
    overrides: Mapping[str, Any] | None = None,
) -> Stack:
    clock = clock or Clock()
    config = AppConfig(
        storage=StorageConfig(root=str(root / "storage"), url_ttl_seconds=URL_TTL_SECONDS),
        queue=QueueConfig(
            max_queued=max_queued,
            lease_seconds=lease_seconds,
            max_attempts=max_attempts,
            retention_seconds=RETENTION_SECONDS,
        ),
        fetch=FetchConfig(
            max_image_bytes=MAX_IMAGE_BYTES, max_audio_bytes=MAX_AUDIO_BYTES, max_audio_seconds=60
        ),
        public_base_url=public_base_url,
        **dict(overrides or {}),
    )
    store = JobStore(
        client,
        namespace=NAMESPACE,
        lease_seconds=lease_seconds,
        max_attempts=max_attempts,
        retention_seconds=RETENTION_SECONDS,
        max_queued=max_queued,
        clock=clock,
    )
    storage = LocalStorage(
        config.storage.root, signing_key=SIGNING_KEY, public_base_url=public_base_url, clock=clock
    )
    publisher = FakePublisher()
    dispatcher = Dispatcher(store, client, publisher, grace_seconds=grace_seconds, clock=clock)
    metrics = MetricsRecorder(client, NAMESPACE)
    context = ApiContext(
        config=config,
        store=store,
        reader=JobReader.from_url(store, _url_of(client), timeout_seconds=2.0),
        storage=storage,
        dispatcher=dispatcher,
        resolver=InputResolver(Fetcher(FetchPolicy.from_config(config.fetch)), storage),
        authenticator=Authenticator(TOKENS),
        metrics=metrics,
        is_ready=is_ready,
    )
    return Stack(config, client, clock, store, storage, publisher, dispatcher, metrics, context)
