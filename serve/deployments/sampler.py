"""Sampler: the GPU stage. Loads the DiT, VAE, CLIP and umT5 once, then runs jobs it claims from the store.

The replica becomes ready only after the weights are loaded and the DiT has run one warm-up pass at each
configured size (compiling it there when ``model.compile`` is on); only then does its job loop start
claiming. Its health check fails when the loop died or its job stopped making progress, so Serve replaces a
replica that hangs. Shutting down, it lets the running job finish for up to ``drain_seconds`` and hands it
back to the queue after that.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import numpy as np
import ray
import torch
from ray import serve
from ray.serve.handle import DeploymentHandle
from ray.util import metrics as ray_metrics

from pipeline.components import LoraSpec, load_components, resolve_device
from pipeline.gpu_memory import GIB, cap_to_share
from pipeline.warmup import warm_up
from serve.config import AppConfig
from serve.engine import PipelineEngine
from serve.jobs.records import JobRecord
from serve.jobs.runner import DependencyFailed, JobRunner
from serve.jobs.worker import JobWorker
from serve.services import Services

logger = logging.getLogger("ray.serve")

# Far above a real encode (seconds) plus a replaced encoder replica's start (tens of seconds).
AUDIO_ENCODE_TIMEOUT_SECONDS = 600.0


def gpu_share() -> float | None:
    """This process's share of a GPU as Ray scheduled it (a replica's ``num_gpus``); None outside Ray or
    without a GPU. (Asked outside Ray, the runtime context would start a local Ray: hence the check.)"""
    if not ray.is_initialized():
        return None
    return ray.get_runtime_context().get_assigned_resources().get("GPU") or None


class Sampler:
    def __init__(self, config: dict[str, Any], redis_url: str, audio_encoder: DeploymentHandle) -> None:
        app_config = AppConfig.model_validate(config)
        self._services = Services(app_config, redis_url)
        model = app_config.model
        device = resolve_device(model.device)
        memory_cap = cap_to_share(device, gpu_share())
        components = load_components(
            model.preset,
            weights_dir=model.weights_dir,
            device=device,
            loras=[LoraSpec(lora.path, lora.scale) for lora in model.loras],
            with_audio_encoder=False,
            fp8=model.fp8,
            token_chunk=model.token_chunk,
            vae_tiling=model.vae_tiling,
            batch_guidance=model.batch_guidance,
            attention=model.attention,
            compile=model.compile,
        )
        warm_up(components, model.warmup_shapes(), guidance=model.warmup_guidance)
        self._audio_encoder = audio_encoder
        self._drain_seconds = app_config.queue.drain_seconds
        self._steps_per_second = ray_metrics.Gauge(
            "infinitetalk_sampler_steps_per_second", description="Denoising steps per second of the last job"
        )
        runner = JobRunner(
            self._services.store,
            self._services.storage,
            PipelineEngine(components, self._encode_speech),
            stall_seconds=app_config.queue.stall_seconds,
            on_finished=self._record_finished,
        )
        self._worker = JobWorker(self._services.store, runner, self._replica_id())
        self._worker.start()
        logger.info(
            "sampler ready: %s on %s%s (%s)",
            model.preset,
            components.device,
            "" if memory_cap is None else f", its share of the GPU: {memory_cap / GIB:.1f} GiB",
            ", ".join(f"{name} {value}" for name, value in components.identities.items()),
        )

    @staticmethod
    def _replica_id() -> str:
        try:
            return serve.get_replica_context().replica_id.unique_id
        except Exception:  # outside a replica (tests)
            return f"pid{os.getpid()}"

    def _encode_speech(self, speech: np.ndarray, frames: int) -> torch.Tensor:
        # Bounded: the heartbeat keeps the lease alive while this thread waits, so an encoder that never
        # comes back would hold the job in_progress forever. A timeout fails this attempt; the lease then
        # expires and the reaper retries the job (or fails it after max_attempts).
        response = self._audio_encoder.encode.remote(speech, frames)
        try:
            return response.result(timeout_s=AUDIO_ENCODE_TIMEOUT_SECONDS)
        except TimeoutError:
            response.cancel()
            raise DependencyFailed(
                f"the audio encoder did not answer within {AUDIO_ENCODE_TIMEOUT_SECONDS:g} s"
            ) from None
        except Exception as error:  # its replica died mid-call, or the call raised there
            raise DependencyFailed(f"the audio encoder failed: {error}") from error

    def _record_finished(self, record: JobRecord) -> None:
        metrics = self._services.metrics
        metrics.record_job_duration((record.finished_at or time.time()) - record.created_at)
        metrics.record_stages(record.timings)
        sampling = record.timings.get("sampling")
        steps = record.settings.steps * record.reproducibility.get("chunks", 0)
        if sampling and steps:
            self._steps_per_second.set(steps / sampling)

    def check_health(self) -> None:
        # Not Redis: its outage is waited out (the job loop retries, leases keep the jobs), and a replica
        # replaced for it would only reload its weights into the same outage.
        problem = self._worker.health_problem()
        if problem is not None:
            raise RuntimeError(problem)

    def __del__(self) -> None:
        self._worker.stop(self._drain_seconds)
