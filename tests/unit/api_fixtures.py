"""Shared pieces of the API, runner, worker and metrics tests.

The stack is the app's own composition root (``serve.services.Services``) on a real Redis server (the
embedded one) with local storage; only the engine is a fake (it writes a tiny real MP4, or fails the way the
test needs), and the clock is the test's.
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

from pipeline.errors import PipelineError
from pipeline.video import write_mp4
from serve.api.routes import create_api
from serve.api.schemas import SubmitRequest
from serve.config import AppConfig, AuthConfig, FetchConfig, QueueConfig, RedisConfig, StorageConfig
from serve.jobs.records import InputSource, JobRecord, JobSettings, StagedInput
from serve.jobs.runner import EngineOutput, Inputs, JobRunner, ProgressFn
from serve.services import Services
from serve.storage import input_key

NAMESPACE = "apitest"
SIGNING_KEY = "s" * 32
TOKENS = {"alpha-token-0123456789abcdef": "alpha", "beta-token-0123456789abcdef": "beta"}
ALPHA = {"Authorization": "Bearer alpha-token-0123456789abcdef"}
BETA = {"Authorization": "Bearer beta-token-0123456789abcdef"}
MAX_IMAGE_BYTES = 512 * 1024
MAX_AUDIO_BYTES = 1024 * 1024
MAX_VIDEO_BYTES = 1024 * 1024
RETENTION_SECONDS = 3600
URL_TTL_SECONDS = 600

# The input's wire names, as the seed page spells them.
ALIASES = [
    "241_positive_prompt",
    "284_image",
    "125_audio",
    "245_valuex246_value",
    "270_value",
    "128_seed",
    "128_steps",
    "128_shift",
    "128_cfg",
]
# Fields of the seed endpoint beyond the seed page's (documented as extensions).
EXTENSIONS = ["audio_cfg", "match_audio_length", "webhook", "webhook_events"]
# The body of the seed page's curl example, verbatim.
SEED_BODY = {
    "241_positive_prompt": "a woman is talking and waving hands",
    "284_image": "Runcomfy_example_1278_1.png",
    "125_audio": "Runcomfy_example_1278_1.mp3",
}
# What that body gives: the seed page's documented defaults.
SEED_SETTINGS = JobSettings(
    prompt="a woman is talking and waving hands",
    width=720,
    height=720,
    frames=125,
    seed=96860978,
    steps=7,
    shift=11.0,
    cfg=1.0,
)


class Clock:
    """Shared by the stores and storage. Starts at the real time, so records carry real-looking times."""

    def __init__(self, now: float | None = None) -> None:
        self.now = time.time() if now is None else now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


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
    seen: list[tuple[JobSettings, Inputs]] = field(default_factory=list)

    def run(
        self, settings: JobSettings, inputs: Inputs, out_path: Path, progress: ProgressFn
    ) -> EngineOutput:
        self.calls += 1
        self.seen.append((settings, inputs))
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
            reproducibility={"seed": settings.seed, "output_size": f"{settings.width}x{settings.height}"},
        )


@dataclass
class FailingEngine:
    """Raises a pipeline error: the job's own fault, failed at once with the error's code."""

    error: PipelineError
    calls: int = 0

    def run(
        self, settings: JobSettings, inputs: Inputs, out_path: Path, progress: ProgressFn
    ) -> EngineOutput:
        self.calls += 1
        raise self.error


@dataclass
class CrashingEngine:
    """Raises something unexpected (an OOM, a bug): the runner leaves the job to lease expiry."""

    calls: int = 0

    def run(
        self, settings: JobSettings, inputs: Inputs, out_path: Path, progress: ProgressFn
    ) -> EngineOutput:
        self.calls += 1
        raise RuntimeError("CUDA out of memory at /secret/path/model.py:42")


class SlowEngine:
    """Reports ``fraction``/``eta`` every ``step_seconds`` until ``release`` is set (calling ``progress`` as
    the real sampler does every step, which is where the runner stops it), then writes the MP4."""

    def __init__(self, fraction: float = 0.25, eta: float = 30.0, step_seconds: float = 0.01) -> None:
        self.fraction, self.eta, self.step_seconds = fraction, eta, step_seconds
        self.started = threading.Event()
        self.release = threading.Event()
        self.steps = 0
        self.calls = 0
        self.finished = 0

    def run(
        self, settings: JobSettings, inputs: Inputs, out_path: Path, progress: ProgressFn
    ) -> EngineOutput:
        self.calls += 1
        self.steps = 0
        progress(self.fraction, self.eta)
        self.started.set()
        while not self.release.wait(self.step_seconds):
            self.steps += 1
            progress(self.fraction, self.eta)
        progress(1.0, 0.0)
        write_tiny_mp4(out_path)
        self.finished += 1
        return EngineOutput(timings={"sampling": 0.5}, reproducibility={"seed": settings.seed})


class HangingEngine:
    """Reports progress once, then blocks (a hung CUDA call) until ``release`` is set; then raises."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()

    def run(
        self, settings: JobSettings, inputs: Inputs, out_path: Path, progress: ProgressFn
    ) -> EngineOutput:
        progress(0.1, None)
        self.started.set()
        self.release.wait()
        raise RuntimeError("the hung call returned an error at last")


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


class Stack(Services):
    """The app's services on the test's Redis, clock and storage directory, with helpers for the tests."""

    def app(self):
        return create_api(self.api_context())

    def enqueue(self, tenant: str = "alpha") -> str:
        """A queued job as a submit leaves it (inputs staged, record created), without HTTP."""
        request_id = uuid.uuid4().hex
        inputs = {}
        for role, data in (("image", png_bytes()), ("audio", wav_bytes())):
            key = input_key(tenant, request_id, role)
            self.storage.put_bytes(key, data, "application/octet-stream")
            inputs[role] = StagedInput(key, "0" * 64, len(data), InputSource.EXAMPLE)
        settings = SubmitRequest.model_validate(SEED_BODY).to_settings()
        self.store.create(JobRecord(request_id=request_id, tenant=tenant, settings=settings, inputs=inputs))
        return request_id

    def runner(self, engine: Any, *, stall_seconds: float | None = None) -> JobRunner:
        return JobRunner(
            self.store, self.storage, engine, stall_seconds=stall_seconds, on_finished=self.record_finished
        )

    def record_finished(self, record: JobRecord) -> None:
        """What the sampler deployment does when a job ends."""
        self.metrics.record_job_duration((record.finished_at or self.clock()) - record.created_at)
        self.metrics.record_stages(record.timings)

    def claim_and_run(self, engine: Any, worker_id: str = "replica-1:run1") -> Any:
        record = self.store.claim_next(worker_id)
        assert record is not None, "nothing to claim"
        return self.runner(engine).run(record, worker_id)

    def objects(self, prefix: str) -> list[str]:
        root = Path(self.config.storage.root)
        return sorted(str(path.relative_to(root)) for path in (root / prefix).rglob("*") if path.is_file())


def build_stack(
    client: redis.Redis,
    root: Path,
    *,
    clock: Clock | None = None,
    max_queued: int = 50,
    lease_seconds: float = 60.0,
    max_attempts: int = 3,
    public_base_url: str | None = None,
    queue: Mapping[str, Any] | None = None,
    fetch: Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
    tokens_file: Path | None = None,
) -> Stack:
    kwargs = client.connection_pool.connection_kwargs
    url = f"redis://{kwargs.get('host', '127.0.0.1')}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"
    config = AppConfig(
        redis=RedisConfig(url=url, namespace=NAMESPACE),
        storage=StorageConfig(root=str(root / "storage"), url_ttl_seconds=URL_TTL_SECONDS),
        auth=AuthConfig(tokens_env="TEST_API_TOKENS", tokens_file=str(tokens_file) if tokens_file else None),
        queue=QueueConfig(
            max_queued=max_queued,
            lease_seconds=lease_seconds,
            max_attempts=max_attempts,
            retention_seconds=RETENTION_SECONDS,
            **dict(queue or {}),
        ),
        fetch=FetchConfig(
            max_image_bytes=MAX_IMAGE_BYTES,
            **{
                "max_audio_bytes": MAX_AUDIO_BYTES,
                "max_video_bytes": MAX_VIDEO_BYTES,
                "max_audio_seconds": 60,
                **dict(fetch or {}),
            },
        ),
        public_base_url=public_base_url,
        **dict(overrides or {}),
    )
    environ = {
        "TEST_API_TOKENS": ",".join(f"{token}:{tenant}" for token, tenant in TOKENS.items()),
        "INFINITETALK_SIGNING_KEY": SIGNING_KEY,
    }
    return Stack(config, url, clock=clock or Clock(), environ=environ)
