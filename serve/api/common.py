"""What every group of routes shares: the context they run in and small helpers on ids, URLs and times."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from fastapi import Request

from serve.api.errors import NotFound
from serve.auth import Authenticator
from serve.config import AppConfig
from serve.job_service import JobService
from serve.jobs.async_store import AsyncJobStore
from serve.jobs.store import JobStore
from serve.metrics import MetricsRecorder
from serve.readiness import ReplicaCounts
from serve.storage import ObjectStore

RETRY_AFTER_NOT_READY_SECONDS = 5
_REQUEST_ID = re.compile(r"[0-9a-f]{32}")


@dataclass
class ApiContext:
    """What the routes need; ``serve.services.Services`` builds it."""

    config: AppConfig
    jobs: JobService
    store: AsyncJobStore
    sync_store: JobStore
    storage: ObjectStore
    authenticator: Authenticator
    metrics: MetricsRecorder
    #: Running replicas per deployment (``serve.readiness``); None where no Serve runs (then unknown).
    replicas: ReplicaCounts | None = None


def known_request_id(request_id: str) -> str:
    """Ids this API never issues are unknown at once, and never echoed back into a message."""
    if not _REQUEST_ID.fullmatch(request_id):
        raise NotFound("No request with that id.")
    return request_id


def base_url(config: AppConfig, request: Request) -> str:
    return (config.public_base_url or str(request.base_url)).rstrip("/")


def absolute_url(config: AppConfig, request: Request, url: str) -> str:
    return f"{base_url(config, request)}{url}" if url.startswith("/") else url


def utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=UTC)
