"""The HTTP API of API.md. Routes only route: ``serve.job_service.JobService`` decides, errors of the layers
below are mapped in ``serve/api/errors.py``.

Built per ingress replica by ``create_api(context)`` (``Ingress.__serve_build_asgi_app__``), and by tests
with a fake sampler, so every endpoint is testable without Ray. Every route that takes a token resolves it
before it reads anything of the request: a caller without a valid token learns nothing about its body.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import anyio
import redis
from fastapi import FastAPI, Header, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel, ValidationError

from pipeline.presets import PRESETS
from serve import fields
from serve.api.common import (
    RETRY_AFTER_NOT_READY_SECONDS,
    ApiContext,
    absolute_url,
    base_url,
    known_request_id,
    utc,
)
from serve.api.errors import (
    BodySizeLimit,
    NotReady,
    PayloadTooLarge,
    UnsupportedMediaType,
    ValidationFailed,
    api_error_from_validation,
    error_responses,
    install_error_handlers,
)
from serve.api.events import add_event_routes
from serve.api.schemas import (
    FileUploadResponse,
    ResultResponse,
    StatusResponse,
    SubmitRequest,
    SubmitResponse,
    input_json_schema,
    output_json_schema,
)
from serve.api.security import Tenant, install_authenticator
from serve.api.two_speakers import TwoSpeakerRequest
from serve.api.video_to_video import VideoToVideoRequest
from serve.api.webhook_routes import add_webhook_routes
from serve.config import AppConfig
from serve.job_service import JobRequest
from serve.jobs.records import JobStatus
from serve.metrics import JobMetricsCollector
from serve.readiness import JOB_DEPLOYMENTS

logger = logging.getLogger(__name__)

MODEL_PATH = "/v1/models/community/infinite-talk/image-to-video"
TWO_SPEAKER_PATH = "/v1/models/community/infinite-talk/fast/multi"
VIDEO_TO_VIDEO_PATH = "/v1/models/community/infinite-talk/video-to-video"
# /docs loads Swagger UI from here (the fastapi-offline package), not from a CDN.
DOCS_ASSETS_PATH = "/docs/assets"
_BODY_SLACK_BYTES = 64 * 1024
_JSON_TYPES = ("application/json",)
Body = TypeVar("Body", SubmitRequest, TwoSpeakerRequest, VideoToVideoRequest)
Route = TypeVar("Route", bound=Callable[..., Any])
# A client's key for retrying a submit safely: the same key and body answer the same job.
IdempotencyKey = Annotated[str | None, Header(max_length=200)]


def request_body_limit(config: AppConfig) -> int:
    """The largest body any submit endpoint takes: its inputs at their byte caps as base64 data: URIs."""
    fetch = config.fetch
    largest = max(
        fetch.max_image_bytes + 2 * fetch.max_audio_bytes, fetch.max_video_bytes + fetch.max_audio_bytes
    )
    return largest * 4 // 3 + _BODY_SLACK_BYTES


def create_api(context: ApiContext) -> FastAPI:
    api = FastAPIOffline(
        static_url=DOCS_ASSETS_PATH,
        title="InfiniteTalk",
        version="0.1.0",
        description="Portrait + speech → lip-synced talking video. RunComfy-compatible asynchronous jobs.",
    )
    install_error_handlers(api)
    install_authenticator(api, context.authenticator)
    fetch = context.config.fetch
    api.add_middleware(BodySizeLimit, max_bytes=request_body_limit(context.config))
    api.add_exception_handler(redis.RedisError, _store_unavailable)
    registry = CollectorRegistry()
    registry.register(JobMetricsCollector(context.sync_store, context.metrics))
    jobs = context.jobs
    model = PRESETS[context.config.model.preset]

    def links(request: Request, request_id: str) -> dict[str, str]:
        base = base_url(context.config, request)
        return {
            "request_id": request_id,
            "status_url": f"{base}/v1/requests/{request_id}/status",
            "result_url": f"{base}/v1/requests/{request_id}/result",
            "cancel_url": f"{base}/v1/requests/{request_id}/cancel",
        }

    def submit_route(path: str, summary: str, body_schema: dict[str, Any]) -> Callable[[Route], Route]:
        """A job kind's POST: 202 with the job's links. The body is read and validated by hand (size-limited,
        one error shape), so its schema goes into the OpenAPI document here."""
        return api.post(
            path,
            status_code=202,
            response_model=SubmitResponse,
            responses=error_responses(400, 401, 409, 413, 415, 422, 429, 503),
            summary=summary,
            openapi_extra={
                "requestBody": {"required": True, "content": {"application/json": {"schema": body_schema}}}
            },
        )

    @submit_route(MODEL_PATH, "Submit a job", SubmitRequest.model_json_schema(by_alias=True))
    async def submit(
        request: Request, tenant: Tenant, idempotency_key: IdempotencyKey = None
    ) -> JSONResponse:
        return await accept(request, tenant, await _json_body(request, SubmitRequest), idempotency_key)

    @submit_route(TWO_SPEAKER_PATH, "Submit a two-speaker job", TwoSpeakerRequest.model_json_schema())
    async def submit_two_speakers(
        request: Request, tenant: Tenant, idempotency_key: IdempotencyKey = None
    ) -> JSONResponse:
        body = await _json_body(request, TwoSpeakerRequest)
        if model.variant.speakers < 2:
            raise ValidationFailed(
                f"This server runs the {model.variant.name} checkpoint (model preset {model.name!r}), which "
                "takes one person's speech; two-speaker jobs need the multi checkpoint (preset "
                "infinitetalk-14b-multi).",
                code="two_speakers_unavailable",
                details=[{"field": fields.RIGHT_AUDIO, "message": "this server takes one speaker"}],
            )
        return await accept(request, tenant, body, idempotency_key)

    @submit_route(
        VIDEO_TO_VIDEO_PATH, "Submit a video-to-video (dubbing) job", VideoToVideoRequest.model_json_schema()
    )
    async def submit_video_to_video(
        request: Request, tenant: Tenant, idempotency_key: IdempotencyKey = None
    ) -> JSONResponse:
        body = await _json_body(request, VideoToVideoRequest)
        return await accept(request, tenant, body, idempotency_key)

    async def accept(
        request: Request, tenant: str, body: JobRequest, idempotency_key: str | None
    ) -> JSONResponse:
        # A blank header is no key (the store would otherwise bind the empty string as one).
        record, _ = await jobs.submit(tenant, body, (idempotency_key or "").strip() or None)
        return JSONResponse(SubmitResponse(**links(request, record.request_id)).model_dump(), status_code=202)

    @api.get(
        "/v1/requests/{request_id}/status",
        response_model=StatusResponse,
        response_model_exclude_none=True,
        responses=error_responses(401, 404, 410),
        summary="Status of a job",
    )
    async def status(request_id: str, tenant: Tenant) -> Response:
        view = await jobs.view(tenant, known_request_id(request_id))
        return _model_response(StatusResponse.from_record(view.record, queue_position=view.queue_position))

    @api.get(
        "/v1/requests/{request_id}/result",
        response_model=ResultResponse,
        response_model_exclude_none=True,
        responses=error_responses(401, 404, 410),
        summary="Result of a job (its current state until completed)",
    )
    async def result(request_id: str, request: Request, tenant: Tenant) -> Response:
        view = await jobs.view(tenant, known_request_id(request_id), with_download=True)
        video_url = None if view.video_url is None else absolute_url(context.config, request, view.video_url)
        body = ResultResponse.from_record(
            view.record, queue_position=view.queue_position, video_url=video_url
        )
        return _model_response(body)

    add_event_routes(api, context)
    add_webhook_routes(api, context)

    @api.post(
        "/v1/requests/{request_id}/cancel",
        response_model=StatusResponse,
        response_model_exclude_none=True,
        responses={
            202: {"model": StatusResponse, "description": "Extension: the running job ends cancelled soon"},
            **error_responses(401, 404, 409, 410),
        },
        summary="Cancel a job (a running one is an extension: it stops at its next step)",
    )
    async def cancel(request_id: str, tenant: Tenant) -> Response:
        record = await jobs.cancel(tenant, known_request_id(request_id))
        status_code = 202 if record.status is JobStatus.IN_PROGRESS else 200
        body = StatusResponse.from_record(record)
        return Response(
            body.model_dump_json(exclude_none=True), status_code=status_code, media_type="application/json"
        )

    @api.get(f"{MODEL_PATH}/schema", summary="Input and output JSON schema (as on the seed page)")
    def schema() -> dict[str, Any]:
        return {"input": input_json_schema(), "output": output_json_schema()}

    @api.post(
        "/v1/files",
        status_code=201,
        response_model=FileUploadResponse,
        responses=error_responses(401, 413, 415, 422),
        summary="Upload an image, audio or video file (raw body) to use as an input reference",
    )
    async def upload(
        request: Request,
        tenant: Tenant,
        filename: Annotated[str | None, Query(max_length=200)] = None,
    ) -> FileUploadResponse:
        data = await _read_body(
            request, max(fetch.max_image_bytes, fetch.max_audio_bytes, fetch.max_video_bytes)
        )
        if not data:
            raise ValidationFailed("The upload is empty.", details=[{"field": "body", "message": "empty"}])
        stored = await jobs.upload(tenant, data)
        return FileUploadResponse(
            file_id=stored.file_id,
            filename=filename,
            size_bytes=stored.size_bytes,
            created_at=utc(stored.created_at),
            # Uploads are deleted with everything else stored once the retention period is over.
            expires_at=utc(stored.expires_at),
        )

    @api.get(
        "/v1/outputs/{path:path}",
        response_class=FileResponse,
        responses={
            200: {"content": {"video/mp4": {"schema": {"type": "string", "format": "binary"}}}},
            **error_responses(404, 410),
        },
        summary="Download (signed URL)",
    )
    def download(path: str, request: Request) -> FileResponse:
        # The link is /v1/ and the object's key, which starts with outputs/ (serve.storage.keys).
        file = context.storage.open_download(f"outputs/{path}", request.query_params)
        return FileResponse(file, media_type="video/mp4", filename="video.mp4")

    @api.get("/readyz", summary="Readiness: whether a job can start now, and which deployments are ready")
    async def readyz() -> JSONResponse:
        store_ok = await context.store.ping()
        accepting = store_ok and await context.store.draining_retry_after() is None
        deployments = None
        if context.replicas is not None:
            counts = await anyio.to_thread.run_sync(context.replicas)
            deployments = {name: {"running_replicas": counts.get(name, 0)} for name in JOB_DEPLOYMENTS}
        ready = accepting and (
            deployments is None or all(d["running_replicas"] > 0 for d in deployments.values())
        )
        body = {
            "ready": ready,
            "job_store": "ok" if store_ok else "unreachable",
            "accepting_jobs": accepting,
            "deployments": deployments,
        }
        headers = {} if ready else {"Retry-After": str(RETRY_AFTER_NOT_READY_SECONDS)}
        return JSONResponse(body, status_code=200 if ready else 503, headers=headers)

    @api.get("/healthz", summary="Liveness: this ingress answers and reaches the job store")
    async def healthz() -> JSONResponse:
        if not await context.store.ping():
            raise NotReady(retry_after=RETRY_AFTER_NOT_READY_SECONDS)
        counts = await context.store.counts()
        accepting = await context.store.draining_retry_after() is None
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


async def _json_body(request: Request, model: type[Body]) -> Body:
    """The submit body, read and validated after the caller was authenticated."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in _JSON_TYPES:
        raise UnsupportedMediaType("The request body must be JSON (Content-Type: application/json).")
    raw = await request.body()
    try:
        return model.model_validate_json(raw)
    except ValidationError as error:
        located = [
            {**item, "loc": ("body", *item.get("loc", ()))} for item in error.errors(include_url=False)
        ]
        raise api_error_from_validation(located) from None


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


def _model_response(model: BaseModel) -> Response:
    """The model as the route's JSON (pydantic-core serialises it) without FastAPI validating it again.

    The polled routes return this: on a Serve ingress that re-validation cost a sixth of the status
    throughput (bench/serving_overhead). The model was validated when it was built.
    """
    return Response(model.model_dump_json(exclude_none=True), media_type="application/json")


async def _store_unavailable(request: Request, exc: Exception) -> JSONResponse:
    logger.error("job store unreachable on %s %s: %s", request.method, request.url.path, exc)
    return NotReady(
        "The job store is unreachable; try again shortly.", retry_after=RETRY_AFTER_NOT_READY_SECONDS
    ).to_response()
