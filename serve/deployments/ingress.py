"""Ingress: the HTTP job API (FastAPI built per replica), plus the maintenance loop every replica runs.

The maintenance loop (reaper, re-publisher, retention) is safe on any number of replicas at once: the
sweep holds a Redis lock and every transition is atomic in the store.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from serve.api.routes import ApiContext, create_api
from serve.auth import Authenticator
from serve.config import AppConfig
from serve.inputs.fetcher import Fetcher, FetchPolicy
from serve.inputs.references import InputResolver
from serve.jobs import JobStatus
from serve.jobs.dispatch import Dispatcher
from serve.services import Services
from serve.storage import LocalStorage
from serve.tasks import TaskPublisher

logger = logging.getLogger("ray.serve")


@serve.ingress()
class Ingress:
    def __init__(self, config: dict[str, Any], redis_url: str, sampler: DeploymentHandle) -> None:
        # The sampler handle is unused here (jobs travel through the queue); binding it makes the Sampler
        # part of this application's deployment graph.
        del sampler
        app_config = AppConfig.model_validate(config)
        self._services = Services(app_config, redis_url)
        self._dispatcher = Dispatcher(self._services.store, self._services.redis, TaskPublisher(redis_url))
        self._context = ApiContext(
            config=app_config,
            store=self._services.store,
            reader=self._services.reader,
            storage=self._services.storage,
            dispatcher=self._dispatcher,
            resolver=InputResolver(
                Fetcher(FetchPolicy.from_config(app_config.fetch)), self._services.storage
            ),
            authenticator=Authenticator.from_config(app_config.auth),
            metrics=self._services.metrics,
        )
        self._stop = threading.Event()
        self._interval = app_config.queue.maintenance_interval_seconds
        self._maintenance = threading.Thread(target=self._maintain, name="maintenance", daemon=True)
        self._maintenance.start()

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_api(self._context)

    def _maintain(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._sweep_once()
            except Exception:  # Redis down, a bad record: log and try again next period
                logger.exception("maintenance sweep failed")

    def _sweep_once(self) -> None:
        report = self._dispatcher.sweep()
        for _ in report.failed:
            self._services.metrics.record_job_finished(JobStatus.FAILED)
        store, storage = self._services.store, self._services.storage
        for request_id in store.list_expired_results():
            store.delete(request_id)
        if isinstance(storage, LocalStorage):
            storage.delete_older_than(time.time() - self._context.config.queue.retention_seconds)

    def check_health(self) -> None:
        if not self._services.store.ping():
            raise RuntimeError("job store (Redis) unreachable")

    def __del__(self) -> None:
        self._stop.set()
