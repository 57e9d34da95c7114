"""The application's arguments: one validated pydantic model, the ``args:`` of a Serve config file.

Secrets never sit in these files: they are named by environment variable (``*_env`` fields) and read in the
process that needs them, so the same YAML can be committed, embedded in a RayService and shown in logs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipeline.errors import SizeError
from pipeline.presets import PRESETS, AttentionKernel, Fp8Mode
from pipeline.sizes import parse_size
from pipeline.streaming import DEFAULT_MAX_SPEECH_FRAMES
from serve.jobs.operations import DAY, QueuePolicy


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LoraConfig(_Strict):
    path: str = Field(description="LoRA safetensors file (lightx2v or FusionX format)")
    scale: float = Field(1.0, description="strength of the LoRA, fused into the weights at load time")


class ModelConfig(_Strict):
    preset: str = Field(
        "tiny", description="model preset: 'tiny' (random weights, CPU) or 'infinitetalk-14b'"
    )
    weights_dir: str | None = Field(
        None, description="weights directory of the 14B preset (README: Real weights)"
    )
    loras: list[LoraConfig] = Field(default_factory=list)
    device: str | None = Field(None, description="torch device; default: cuda when the replica has a GPU")
    fp8: Fp8Mode = Field(
        Fp8Mode.OFF,
        description="fp8 DiT weights: 'off', 'weights' (half the memory), 'dynamic' or 'dynamic-tensorwise' "
        "(fp8 matmuls, per-row or per-tensor scales; Ada/Hopper, fast with compile)",
    )
    attention: AttentionKernel = Field(
        AttentionKernel.AUTO,
        description="self-attention kernel: 'auto' (the fastest this device runs, logged at start), 'sdpa' "
        "(the reference), 'sdpa-cudnn', 'sdpa-flash', 'sage', 'fa4' (FlashAttention-4, Hopper/Blackwell)",
    )
    compile: bool = Field(
        False, description="torch.compile the DiT blocks when the sampler starts (warm up warmup_sizes)"
    )
    warmup_sizes: list[str] = Field(
        default_factory=list,
        description="output sizes (WxH) the sampler runs one DiT pass at before it takes jobs, so "
        "compilation and kernel set-up happen at start; a job at another size compiles on its first pass",
    )
    warmup_guidance: bool = Field(
        False, description="also warm up the batch-2 pass that cfg ≠ 1 jobs run (with batch_guidance)"
    )
    token_chunk: int | None = Field(
        None,
        ge=1,
        description="run the DiT's token-wise work this many tokens at a time (lower activation peak)",
    )
    vae_tiling: bool = Field(False, description="VAE decode/encode in spatial tiles (lower activation peak)")
    batch_guidance: bool = Field(
        True, description="cfg ≠ 1: conditional and negative pass as one batch; false halves their peak"
    )

    @field_validator("fp8", mode="before")
    @classmethod
    def _yaml_off(cls, value: object) -> object:
        # YAML 1.1 reads a bare `fp8: off` as false.
        return Fp8Mode.OFF if value is False else value

    @field_validator("warmup_sizes")
    @classmethod
    def _sizes_parse(cls, sizes: list[str]) -> list[str]:
        for size in sizes:
            try:
                parse_size(size)
            except SizeError as error:
                raise ValueError(f"warmup_sizes: {error.message}") from None
        return sizes

    def warmup_shapes(self) -> list[tuple[int, int]]:
        return [parse_size(size) for size in self.warmup_sizes]

    @model_validator(mode="after")
    def _preset_known(self) -> ModelConfig:
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose one of {sorted(PRESETS)}")
        if PRESETS[self.preset].needs_weights and not self.weights_dir:
            raise ValueError(f"preset {self.preset!r} needs weights_dir")
        return self


class RedisConfig(_Strict):
    url: str | None = Field(None, description="redis:// URL; None starts the embedded Redis (single machine)")
    url_env: str = Field("INFINITETALK_REDIS_URL", description="environment variable that overrides url")
    embedded_dir: str = Field("var/redis", description="data directory of the embedded Redis (AOF)")
    embedded_port: int = Field(6399, ge=1024, le=65535)
    namespace: str = Field("infinitetalk", pattern=r"^[A-Za-z0-9_.-]+$")

    def resolved_url(self) -> str | None:
        return os.environ.get(self.url_env) or self.url


class StorageConfig(_Strict):
    kind: Literal["local", "s3"] = "local"
    root: str = Field("var/storage", description="local: directory for inputs and outputs")
    signing_key_env: str = Field(
        "INFINITETALK_SIGNING_KEY", description="local: env var with the HMAC key that signs download URLs"
    )
    previous_signing_keys_env: str = Field(
        "INFINITETALK_PREVIOUS_SIGNING_KEYS",
        description="local: env var with retired signing keys, comma-separated, that still verify the links "
        "they signed (key rotation: keep them for url_ttl_seconds)",
    )
    bucket: str | None = None
    endpoint_url: str | None = Field(
        None, description="s3: endpoint of an S3-compatible store (MinIO, R2 ...)"
    )
    region: str | None = None
    prefix: str = ""
    access_key_env: str = "AWS_ACCESS_KEY_ID"
    secret_key_env: str = "AWS_SECRET_ACCESS_KEY"
    url_ttl_seconds: int = Field(3600, ge=60, le=7 * 86400, description="lifetime of download URLs")

    @model_validator(mode="after")
    def _s3_needs_bucket(self) -> StorageConfig:
        if self.kind == "s3" and not self.bucket:
            raise ValueError("storage.kind 's3' needs storage.bucket")
        return self


class AuthConfig(_Strict):
    mode: Literal["tokens", "none"] = Field("tokens", description="'none' is for local development only")
    tokens_file: str | None = Field(None, description="YAML/JSON mapping token → tenant")
    tokens_env: str = Field("INFINITETALK_API_TOKENS", description="env var 'token:tenant,token:tenant'")


class QueueConfig(_Strict):
    max_queued: int = Field(200, ge=1, description="submissions beyond this many queued jobs get 429")
    lease_seconds: float = Field(
        60.0, gt=0, description="a sampler that stops heartbeating loses its job after this"
    )
    max_attempts: int = Field(3, ge=1, description="executions of one job before it fails retries_exhausted")
    retention_seconds: int = Field(86400, ge=60, description="results are kept this long, then 410")
    maintenance_interval_seconds: float = Field(
        5.0, gt=0, description="reaper, retention and tokens-file reload period"
    )
    drain_seconds: float = Field(
        600.0, ge=0, description="a stopping sampler lets its job run this long, then hands it back"
    )
    max_run_seconds: float | None = Field(
        3600.0, gt=0, description="a job's run that lasts longer fails time_limit (null: no limit)"
    )
    stall_seconds: float | None = Field(
        300.0,
        gt=0,
        description="a running job that reports no progress this long loses its lease (and its replica is "
        "replaced); null: never",
    )
    tenant_max_queued: int = Field(
        50, ge=0, description="queued jobs per tenant (the tokens file may give a tenant its own)"
    )
    tenant_max_running: int = Field(
        4, ge=0, description="running jobs per tenant (the tokens file may give a tenant its own)"
    )
    tenant_max_upload_bytes: int = Field(
        2 * 1024**3, ge=0, description="stored upload bytes per tenant until they expire (ditto)"
    )

    def policy(self) -> QueuePolicy:
        return QueuePolicy(
            lease_seconds=self.lease_seconds,
            max_attempts=self.max_attempts,
            retention_seconds=float(self.retention_seconds),
            # A key answers with its job as long as the job is kept (the key is deleted with it); this
            # expiry is a backstop, with a day more for the time the job waits and runs before it is kept.
            idempotency_seconds=float(self.retention_seconds) + DAY,
            max_queued=self.max_queued,
            max_run_seconds=self.max_run_seconds,
            tenant_max_queued=self.tenant_max_queued,
            tenant_max_running=self.tenant_max_running,
            tenant_max_upload_bytes=self.tenant_max_upload_bytes,
        )


class FetchConfig(_Strict):
    max_image_bytes: int = Field(50 * 1024**2, ge=1)
    max_audio_bytes: int = Field(100 * 1024**2, ge=1)
    max_video_bytes: int = Field(100 * 1024**2, ge=1, description="a video-to-video source's largest size")
    timeout_seconds: float = Field(30.0, gt=0, description="total time for one input download")
    max_redirects: int = Field(5, ge=0)
    max_audio_seconds: float = Field(600.0, gt=0, description="longer speech is refused at submit")
    max_video_seconds: float = Field(
        120.0, gt=0, description="a longer video-to-video source is refused at submit (by its stated length)"
    )
    max_video_pixels: int = Field(
        3840 * 2160, ge=256, description="a video-to-video source with larger frames is refused at submit"
    )
    max_speech_frames: int = Field(
        DEFAULT_MAX_SPEECH_FRAMES,
        ge=1,
        description="with match_audio_length, the longest video in frames at 25 fps (speech is cut there)",
    )
    allow_http_and_private: bool = Field(False, description="development only: http:// and private hosts")
    max_concurrent_decodes: int = Field(
        4, ge=1, description="inputs an ingress replica decodes and checks at once (the rest wait)"
    )


class EventsConfig(_Strict):
    """``GET /v1/requests/{id}/events`` (server-sent events), per ingress replica."""

    max_streams: int = Field(256, ge=1, description="open event streams per ingress replica (503 beyond)")
    poll_seconds: float = Field(0.5, gt=0, le=10, description="how often a stream reads its job's changes")
    heartbeat_seconds: float = Field(
        15.0, gt=0, description="a comment line after this long without an event, so proxies keep the stream"
    )
    max_stream_seconds: float = Field(
        3600.0, gt=0, description="a stream ends after this long; the client resumes with Last-Event-ID"
    )


class WebhooksConfig(_Strict):
    """Webhook deliveries (``serve.webhooks``): signed per Standard Webhooks, retried for a window."""

    allow_local_http: bool = Field(
        False,
        description="development only: also deliver to http://127.0.0.1 (or [::1]) targets, so a developer "
        "receives webhooks on their own machine; never set in a cluster config",
    )
    retry_window_seconds: float = Field(
        24 * 3600.0, gt=0, description="a delivery is retried for this long after its event, then given up"
    )
    first_retry_seconds: float = Field(5.0, gt=0, description="the delay before the first retry (jittered)")
    max_retry_interval_seconds: float = Field(600.0, gt=0, description="the longest wait between attempts")
    timeout_seconds: float = Field(10.0, gt=0, description="one delivery attempt's time limit")
    poll_seconds: float = Field(
        1.0, gt=0, le=60, description="how often a dispatcher looks for due deliveries"
    )


class AppConfig(_Strict):
    model: ModelConfig = Field(default_factory=ModelConfig)
    redis: RedisConfig = Field(default_factory=RedisConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    queue: QueueConfig = Field(default_factory=QueueConfig)
    fetch: FetchConfig = Field(default_factory=FetchConfig)
    events: EventsConfig = Field(default_factory=EventsConfig)
    webhooks: WebhooksConfig = Field(default_factory=WebhooksConfig)
    public_base_url: str | None = Field(
        None, description="base of the URLs in responses; default: request host"
    )

    def with_absolute_paths(self, base: Path) -> AppConfig:
        """Relative paths resolved against ``base`` (the launcher's cwd): a replica's cwd may differ."""

        def absolute(value: str | None) -> str | None:
            return None if value is None else str((base / Path(value).expanduser()).resolve())

        return self.model_copy(
            update={
                "model": self.model.model_copy(update={"weights_dir": absolute(self.model.weights_dir)}),
                "redis": self.redis.model_copy(update={"embedded_dir": absolute(self.redis.embedded_dir)}),
                "storage": self.storage.model_copy(update={"root": absolute(self.storage.root)}),
                "auth": self.auth.model_copy(update={"tokens_file": absolute(self.auth.tokens_file)}),
            }
        )
