"""Ingress: the HTTP job API (FastAPI built per replica), plus the maintenance loop every replica runs
(``serve.maintenance``: tokens reload, reaper, retention; safe on any number of replicas at once)."""

from __future__ import annotations

import logging
import threading
from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from serve.api.routes import create_api
from serve.config import AppConfig
from serve.maintenance import Maintenance
from serve.readiness import CachedCounts, serve_replica_counts
from serve.services import Services
from serve.webhooks import WebhookDispatcher

logger = logging.getLogger("ray.serve")


@serve.ingress()
class Ingress:
    def __init__(self, config: dict[str, Any], redis_url: str, sampler: DeploymentHandle) -> None:
        # The sampler handle is unused here (jobs travel through the store); binding it makes the Sampler
        # part of this application's deployment graph.
        del sampler
        self._services = Services(AppConfig.model_validate(config), redis_url)
        app_name = serve.get_replica_context().app_name
        self._context = self._services.api_context(CachedCounts(lambda: serve_replica_counts(app_name)))
        self._maintenance = Maintenance(
            self._services.store, self._services.storage, self._services.authenticator
        )
        self._stop = threading.Event()
        self._interval = self._services.config.queue.maintenance_interval_seconds
        threading.Thread(target=self._maintain, name="maintenance", daemon=True).start()
        config = self._services.config
        WebhookDispatcher(
            self._services.async_store,
            self._services.storage,
            self._services.webhook_targets,
            config.webhooks,
            public_base_url=config.public_base_url,
            url_ttl_seconds=config.storage.url_ttl_seconds,
        ).run_in_thread(self._stop)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_api(self._context)

    def _maintain(self) -> None:
        while True:
            try:
                self._maintenance.run_once()
            except Exception:  # Redis down, a bad record: log and try again next period
                logger.exception("maintenance failed")
            if self._stop.wait(self._interval):
                return

    def __del__(self) -> None:
        self._stop.set()
