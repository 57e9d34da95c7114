"""The HTTP API of API.md. Route functions only route: the job store, storage and resolver do the work.

Built per ingress replica by ``create_api(context)`` (``Ingress.__serve_build_asgi_app__``), and by tests
with a fake sampler, so every endpoint is testable without Ray.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Annotated, Any

import anyio
import redis
from fastapi import Depends, FastAPI, Header, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel

from serve.api.errors import (
    ApiError,
    BodySizeLimit,
    Conflict,
    Draining,
    Gone,
    NotFound,
    NotReady,
    PayloadTooLarge,
    QueueFull,
    ValidationFailed,
    error_responses,
    install_error_handlers,
)
from serve.api.schemas import (
    FileUploadResponse,
    ResultResponse,
    StatusResponse,
    SubmitRequest,
    SubmitResponse,
    input_json_schema,
    output_json_schema,
)
from serve.auth import Authenticator, install_authenticator, require_tenant
from serve.config import AppConfig
from serve.inputs.probe import probe_audio, probe_image
from serve.inputs.references import InputKind, InputResolver, new_file_id
from serve.jobs import CancelConflict, IdempotencyConflict, JobNotFound, JobRecord, JobStatus, JobStore
from serve.jobs import QueueFull as StoreQueueFull
from serve.jobs.dispatch import Dispatcher
from serve.jobs.reader import JobReader
from serve.metrics import JobMetricsCollector, MetricsRecorder
from serve.storage import LocalStorage, Storage, input_key, upload_key

logger = logging.getLogger(__name__)

MODEL_PATH = "/v1/models/community/infinite-talk/image-to-video"
RETRY_AFTER_QUEUE_FULL_SECONDS = 30
# Ids this API issues (uuid4 hex); anything else is never echoed back into an error message.
_REQUEST_ID = re.compile(r"[0-9a-f]{32}")
RETRY_AFTER_NOT_READY_SECONDS = 5
# Largest JSON body: two data: URIs at the byte caps, base64-inflated, plus slack.
_BODY_SLACK_BYTES = 64 * 1024

Tenant = Annotated[str, Depends(require_tenant)]


@dataclass
class ApiContext:
    config: AppConfig
    store: JobStore
    reader: JobReader
    storage: Storage
    dispatcher: Dispatcher
    resolver: InputResolver
    authenticator: Authenticator
    metrics: MetricsRecorder
    is_ready: Callable[[], bool] = lambda: True


def create_api(context: ApiContext) -> FastAPI:
    api = FastAPI(
        title="InfiniteTalk",
        version="0.1.0",
        description="Portrait + speech → lip-synced talking video. RunComfy-compatible asynchronous jobs.",
    )
    install_error_handlers(api)
    install_authenticator(api, context.authenticator)
    fetch = context.config.fetch
    body_limit = 2 * max(fetch.max_image_bytes, fetch.max_audio_bytes) * 4 // 3 + _BODY_SLACK_BYTES
    api.add_middleware(BodySizeLimit, max_bytes=body_limit)
    api.add_exception_handler(redis.RedisError, _store_unavailable)
    registry = CollectorRegistry()
    registry.register(JobMetricsCollector(context.store, context.metrics))
    store, storage = context.store, context.storage
    url_ttl = context.config.storage.url_ttl_seconds

    def urls(request: Request, request_id: str) -> dict[str, str]:
        base = _base_url(context.config, request)
        return {
            "status_url": f"{base}/v1/requests/{request_id}/status",
            "result_url": f"{base}/v1/requests/{request_id}/result",
            "cancel_url": f"{base}/v1/requests/{request_id}/cancel",
        }

    async def owned_record(request_id: str, tenant: str) -> JobRecord:
        record = await context.reader.get(request_id, tenant)
        if record is None:
            if await context.reader.is_gone(request_id, tenant):
                raise Gone(f"Request {request_id} has expired and its result was deleted.")
            shown = request_id if _REQUEST_ID.fullmatch(request_id) else "with that id"
            raise NotFound(f"No request {shown}.")
        if record.is_expired(time.time()):
            raise Gone(f"Request {request_id} has expired and its result was deleted.")
        return record

    async def position(record: JobRecord) -> int | None:
        if record.status is not JobStatus.IN_QUEUE:
            return None
        return await context.reader.queue_position(record.request_id)

    @api.post(
        MODEL_PATH,
        status_code=202,
        response_model=SubmitResponse,
        responses=error_responses(400, 401, 409, 413, 415, 422, 429, 503),
        summary="Submit a job",
    )
    async def submit(
        body: SubmitRequest,
        request: Request,
        tenant: Tenant,
        idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
    ) -> JSONResponse:
        if not context.is_ready():
            raise NotReady(retry_after=RETRY_AFTER_NOT_READY_SECONDS)
        # A blank header is no key (the store would otherwise bind the empty string as one).
        idempotency_key = (idempotency_key or "").strip() or None
        params = body.to_generation_params()
        body_hash = hashlib.sha256(json.dumps(params.to_dict(), sort_keys=True).encode()).hexdigest()
        if idempotency_key:
            existing = await anyio.to_thread.run_sync(
                _lookup_idempotent, store, tenant, idempotency_key, body_hash
            )
            if existing is not None:
                return _accepted(existing.request_id, urls(request, existing.request_id))
        drain_retry_after = await anyio.to_thread.run_sync(store.draining_retry_after)
        if drain_retry_after is not None:
            raise Draining(retry_after=drain_retry_after)
        if await anyio.to_thread.run_sync(store.queued_count) >= context.config.queue.max_queued:
            raise QueueFull(retry_after=RETRY_AFTER_QUEUE_FULL_SECONDS)

        started = time.perf_counter()
        image, audio = await asyncio.gather(
            _checked_input(context, params.image_ref, InputKind.IMAGE, tenant),
            _checked_input(context, params.audio_ref, InputKind.AUDIO, tenant),
        )
        request_id = uuid.uuid4().hex
        inputs = {
            "image": input_key(tenant, request_id, "image"),
            "audio": input_key(tenant, request_id, "audio"),
        }
        await anyio.to_thread.run_sync(storage.put_bytes, inputs["image"], image, "application/octet-stream")
        await anyio.to_thread.run_sync(storage.put_bytes, inputs["audio"], audio, "application/octet-stream")
        record = JobRecord(
            request_id=request_id,
            tenant=tenant,
            params=params.to_dict(),
            inputs=inputs,
            timings={"fetch_inputs": time.perf_counter() - started},
        )
        record, created = await anyio.to_thread.run_sync(_create, context, record, idempotency_key, body_hash)
        if created:
            await anyio.to_thread.run_sync(_publish, context, request_id)
            await anyio.to_thread.run_sync(context.metrics.count, "jobs_submitted")
        return _accepted(record.request_id, urls(request, record.request_id))

    @api.get(
        "/v1/requests/{request_id}/status",
        response_model=StatusResponse,
        response_model_exclude_none=True,
        responses=error_responses(401, 404, 410),
        summary="Status of a job",
    )
    async def status(request_id: str, tenant: Tenant) -> Response:
        record = await owned_record(request_id, tenant)
        return _model_response(StatusResponse.from_record(record, queue_position=await position(record)))

    @api.get(
        "/v1/requests/{request_id}/result",
        response_model=ResultResponse,
        response_model_exclude_none=True,
        responses=error_responses(401, 404, 410),
        summary="Result of a job (its current state until completed)",
    )
    async def result(request_id: str, request: Request, tenant: Tenant) -> Response:
        record = await owned_record(request_id, tenant)
        video_url = None
        if record.status is JobStatus.COMPLETED and record.output:
            ttl = _download_ttl(record, url_ttl, time.time())
            # Signing is local computation (HMAC, or an S3 presign): no I/O on the event loop.
            video_url = _absolute(context.config, request, storage.url_for(record.output["video"], ttl))
        body = ResultResponse.from_record(record, queue_position=await position(record), video_url=video_url)
        return _model_response(body)

    @api.post(
        "/v1/requests/{request_id}/cancel",
        response_model=StatusResponse,
        response_model_exclude_none=True,
        responses=error_responses(401, 404, 409, 410),
        summary="Cancel a queued job",
    )
    async def cancel(request_id: str, tenant: Tenant) -> StatusResponse:
        before = await owned_record(request_id, tenant)
        try:
            record = await anyio.to_thread.run_sync(store.cancel, request_id, tenant)
        except CancelConflict as conflict:
            raise Conflict.not_cancellable(request_id, conflict.record.status.value) from None
        except JobNotFound:  # deleted by the retention sweep since it was read
            raise Gone(f"Request {request_id} has expired and its result was deleted.") from None
        if before.status is not JobStatus.CANCELLED:
            await anyio.to_thread.run_sync(context.metrics.record_job_finished, JobStatus.CANCELLED)
        return StatusResponse.from_record(record)

    @api.get(f"{MODEL_PATH}/schema", summary="Input and output JSON schema (as on the seed page)")
    def schema() -> dict[str, Any]:
        return {"input": input_json_schema(), "output": output_json_schema()}

    @api.post(
        "/v1/files",
        status_code=201,
        response_model=FileUploadResponse,
        responses=error_responses(401, 413, 415, 422),
        summary="Upload an image or audio file (raw body) to use as an input reference",
    )
    async def upload(
        request: Request,
        tenant: Tenant,
        filename: Annotated[str | None, Query(max_length=200)] = None,
    ) -> FileUploadResponse:
        data = await _read_body(request, max(fetch.max_image_bytes, fetch.max_audio_bytes))
        if not data:
            raise ValidationFailed("The upload is empty.", details=[{"field": "body", "message": "empty"}])
        await anyio.to_thread.run_sync(_probe_any_media, data, fetch.max_audio_seconds)
        file_id = new_file_id()
        await anyio.to_thread.run_sync(
            storage.put_bytes, upload_key(tenant, file_id), data, "application/octet-stream"
        )
        now = time.time()
        return FileUploadResponse(
            file_id=file_id,
            filename=filename,
            size_bytes=len(data),
            created_at=_utc(now),
            # Uploads are deleted with everything else stored once the retention period is over.
            expires_at=_utc(now + context.config.queue.retention_seconds),
        )

    @api.get(
        "/v1/outputs/{key:path}",
        response_class=FileResponse,
        responses={
            200: {"content": {"video/mp4": {"schema": {"type": "string", "format": "binary"}}}},
            **error_responses(404, 410),
        },
        summary="Download (signed URL)",
    )
    def download(key: str, expires: str = "", sig: str = "") -> FileResponse:
        if not isinstance(storage, LocalStorage):
            raise NotFound()
        storage.verify_signature(key, expires, sig)
        return FileResponse(storage.local_path(key), media_type="video/mp4", filename="video.mp4")

    @api.get("/healthz", summary="Readiness: the job store answers and the app is initialised")
    def healthz() -> JSONResponse:
        if not context.is_ready() or not store.ping():
            raise NotReady(retry_after=RETRY_AFTER_NOT_READY_SECONDS)
        counts = store.counts()
        accepting = store.draining_retry_after() is None
        return JSONResponse(
            {"status": "ok", "accepting_jobs": accepting, "queued": counts[JobStatus.IN_QUEUE]}
        )

    @api.get(
        "/metrics",
        response_class=PlainTextResponse,
        summary="Prometheus metrics (global job figures, read from Redis)",
    )
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return api


def _lookup_idempotent(store: JobStore, tenant: str, key: str, body_hash: str) -> JobRecord | None:
    try:
        return store.lookup_idempotent(tenant, key, body_hash)
    except IdempotencyConflict as conflict:
        raise Conflict.idempotency_key_reused(conflict.request_id) from None


def _download_ttl(record: JobRecord, url_ttl: int, now: float) -> int:
    """A download link must not outlive the result: after ``expires_at`` the API answers 410 for the job."""
    if record.expires_at is None:
        return url_ttl
    return max(1, min(url_ttl, int(record.expires_at - now)))


def _create(
    context: ApiContext, record: JobRecord, idempotency_key: str | None, body_hash: str
) -> tuple[JobRecord, bool]:
    context.dispatcher.mark_pending(record.request_id)
    try:
        return context.store.create(record, idempotency_key=idempotency_key, body_hash=body_hash)
    except IdempotencyConflict as conflict:
        raise Conflict.idempotency_key_reused(conflict.request_id) from None
    except StoreQueueFull:
        raise QueueFull(retry_after=RETRY_AFTER_QUEUE_FULL_SECONDS) from None


def _publish(context: ApiContext, request_id: str) -> None:
    """The job is stored (accepted) by now: a failed publish must not turn into an error that makes the client
    submit again. Its pending mark stays, so the dispatcher's sweep publishes it after the grace period."""
    try:
        context.dispatcher.publish(request_id)
    except Exception:
        logger.warning("publishing job %s failed; the sweep will publish it", request_id, exc_info=True)


async def _checked_input(context: ApiContext, reference: str, kind: InputKind, tenant: str) -> bytes:
    try:
        resolved = await context.resolver.resolve(reference, kind=kind, tenant=tenant)
        if kind is InputKind.IMAGE:
            await anyio.to_thread.run_sync(lambda: probe_image(resolved.data))
        else:
            max_seconds = context.config.fetch.max_audio_seconds
            await anyio.to_thread.run_sync(lambda: probe_audio(resolved.data, max_seconds=max_seconds))
    except ApiError as error:
        await anyio.to_thread.run_sync(context.metrics.record_fetch_failure, error.code)
        raise
    return resolved.data


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused as soon as it passes ``limit`` (declared or streamed), never held beyond it."""
    declared = request.headers.get("content-length", "")
    too_large = PayloadTooLarge(f"The upload is larger than the {limit} byte limit.")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def _probe_any_media(data: bytes, max_audio_seconds: float) -> None:
    """An upload must be an image or audio; the image probe's verdict is reported when both refuse."""
    try:
        probe_image(data, field="body")
    except ApiError as image_error:
        try:
            probe_audio(data, field="body", max_seconds=max_audio_seconds)
        except ApiError:
            raise image_error from None


def _accepted(request_id: str, links: dict[str, str]) -> JSONResponse:
    return JSONResponse(SubmitResponse(request_id=request_id, **links).model_dump(), status_code=202)


def _base_url(config: AppConfig, request: Request) -> str:
    return (config.public_base_url or str(request.base_url)).rstrip("/")


def _model_response(model: BaseModel) -> Response:
    """The model as the route's JSON (pydantic-core serialises it) without FastAPI validating it again.

    The polled routes return this: on a Serve ingress that re-validation cost a sixth of the status
    throughput (bench/serving_overhead). The model was validated when it was built.
    """
    return Response(model.model_dump_json(exclude_none=True), media_type="application/json")


def _absolute(config: AppConfig, request: Request, url: str) -> str:
    return f"{_base_url(config, request)}{url}" if url.startswith("/") else url


def _utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=timezone.utc)


async def _store_unavailable(request: Request, exc: Exception) -> JSONResponse:
    logger.error("job store unreachable on %s %s: %s", request.method, request.url.path, exc)
    return NotReady(
        "The job store is unreachable; try again shortly.", retry_after=RETRY_AFTER_NOT_READY_SECONDS
    ).to_response()
