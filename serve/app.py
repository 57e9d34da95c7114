"""The Serve application: ``serve.app:build_app`` is the ``import_path`` of every config in configs/.

Three deployments, composed with ``.bind()``: the Ingress (HTTP API, writes jobs into the store), the
Sampler (claims jobs from the store; the GPU stage) and the AudioEncoder it calls through a
``DeploymentHandle``. The args of the config are validated by ``AppConfig`` (unknown keys are errors) before
anything starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray import serve
from ray.serve import Application

from serve.config import AppConfig
from serve.deployments.audio_encoder import AudioEncoder
from serve.deployments.ingress import Ingress
from serve.deployments.sampler import Sampler
from serve.services import resolve_redis_url


def build_app(args: dict[str, Any]) -> Application:
    config = AppConfig.model_validate(args).with_absolute_paths(Path.cwd())
    redis_url = resolve_redis_url(config)
    plain = config.model_dump(mode="json")

    audio_encoder = serve.deployment(AudioEncoder, name="AudioEncoder", max_ongoing_requests=4)
    # Replica counts and autoscaling (with serve.autoscaling:BacklogPolicy) come from the config file's
    # deployments section: Ray replaces a code-level autoscaling_config whole with the file's.
    sampler = serve.deployment(
        Sampler,
        name="Sampler",
        max_ongoing_requests=1,
        graceful_shutdown_timeout_s=config.queue.drain_seconds + 30,
    )
    ingress = serve.deployment(Ingress, name="Ingress")
    return ingress.bind(plain, redis_url, sampler.bind(plain, redis_url, audio_encoder.bind(plain)))
