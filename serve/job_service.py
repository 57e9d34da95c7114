"""What the API does with jobs and uploads: submit, read, cancel, upload. Routes only route; this decides.

No HTTP here: refusals are the lower layers' errors (``serve.jobs.errors``, ``serve.inputs.errors``,
``serve.storage.errors``), which ``serve/api/errors.py`` maps to status codes.

A submit costs one hop to a worker thread, for the CPU and disk work; the rest is awaited on the event loop:

1. an idempotent resubmission is answered from the store, and the app's and the tenant's admission (draining,
   the queue's bound, the tenant's cap) is read, before anything is fetched;
2. every reference is resolved at once (URLs downloaded) in a task group: the first input refused stops the
   other's download;
3. in one worker thread, a bounded number of submits at a time per replica: ``data:`` URIs decoded, uploads
   and examples read, every input probed as media, hashed and staged in storage;
4. the job is created (atomically re-checking the bounds and the idempotency key); a submit refused there,
   or beaten to its idempotency key by a concurrent one, deletes what it staged (one whose reply was lost
   keeps it: the job may exist).
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from dataclasses import dataclass

import anyio

from pipeline.streaming import speech_frame_count
from serve.api.knobs import InputFacts
from serve.api.schemas import SubmitRequest
from serve.api.two_speakers import TwoSpeakerRequest
from serve.api.video_to_video import VideoToVideoRequest
from serve.config import FetchConfig
from serve.inputs.errors import InputRejected
from serve.inputs.fetcher import Fetcher
from serve.inputs.probe import probe_any_media, probe_audio, probe_image, probe_video
from serve.inputs.references import InputKind, InputResolver, PendingInput, new_file_id
from serve.jobs.async_store import AsyncJobStore
from serve.jobs.errors import AppDraining, JobGone, JobNotFound, JobStoreError, QueueFull, TenantQueueFull
from serve.jobs.records import JobRecord, JobSettings, StagedInput
from serve.metrics import FETCH_FAILURES
from serve.storage import ObjectStore, input_key, upload_key

logger = logging.getLogger(__name__)

JobRequest = SubmitRequest | TwoSpeakerRequest | VideoToVideoRequest


@dataclass(frozen=True)
class Upload:
    file_id: str
    size_bytes: int
    created_at: float
    expires_at: float


@dataclass(frozen=True)
class JobView:
    """A job as the status and result endpoints show it."""

    record: JobRecord
    queue_position: int | None = None
    video_url: str | None = None


class JobService:
    def __init__(
        self,
        store: AsyncJobStore,
        storage: ObjectStore,
        resolver: InputResolver,
        *,
        limits: FetchConfig,
        url_ttl_seconds: int,
        webhook_targets: Fetcher | None = None,
    ) -> None:
        """``webhook_targets``: the guard a webhook URL must pass at submit (None: webhooks refused)."""
        self._store = store
        self._storage = storage
        self._resolver = resolver
        self._limits = limits
        self._webhook_targets = webhook_targets
        self._url_ttl = url_ttl_seconds
        self._decode_slots = anyio.CapacityLimiter(limits.max_concurrent_decodes)

    # -- submit ---------------------------------------------------------------------------------------------

    async def submit(
        self, tenant: str, request: JobRequest, idempotency_key: str | None = None
    ) -> tuple[JobRecord, bool]:
        """The accepted job, and whether this call created it (False: an idempotent resubmission)."""
        body_hash = request.body_hash()
        if idempotency_key is not None:
            existing = await self._store.lookup_idempotent(tenant, idempotency_key, body_hash)
            if existing is not None:
                return existing, False
        admission = await self._store.admission(tenant)
        if admission.draining_retry_after is not None:
            raise AppDraining(admission.draining_retry_after)
        if admission.queue_full:
            raise QueueFull("the queue is full")
        if admission.tenant_full:
            raise TenantQueueFull(admission.tenant_cap)

        request_id = uuid.uuid4().hex
        started = time.perf_counter()
        try:
            if request.webhook is not None:
                await self._check_webhook(request.webhook)
            pending = await self._resolve(tenant, request.references())
            async with self._decode_slots:
                inputs, durations, sizes = await anyio.to_thread.run_sync(
                    self._stage, tenant, request_id, pending
                )
            try:
                settings = self._settings(request, pending, durations, sizes)
            except InputRejected:
                await anyio.to_thread.run_sync(self._unstage, inputs)
                raise
        except InputRejected as refused:
            await self._store.count(FETCH_FAILURES, refused.code)
            raise
        record = JobRecord(
            request_id=request_id,
            tenant=tenant,
            settings=settings,
            inputs=inputs,
            timings={"submit_inputs": time.perf_counter() - started},
            webhook=request.webhook,
            webhook_events=request.chosen_webhook_events(),
        )
        try:
            accepted, created = await self._store.create(
                record, idempotency_key, body_hash if idempotency_key else None
            )
        except JobStoreError:
            # Refused (queue full, the key used for another body): no record names these inputs.
            await anyio.to_thread.run_sync(self._unstage, inputs)
            raise
        # Any other failure leaves them: a reply lost (a connection reset, a timeout, the request cancelled)
        # may hide a job that was created and needs them. Unclaimed, they go with the storage sweep.
        if accepted.request_id != request_id:
            # Another submit with this key won meanwhile; its record names its own inputs, not these.
            await anyio.to_thread.run_sync(self._unstage, inputs)
        return accepted, created

    async def _check_webhook(self, url: str) -> None:
        """The target passes the same address policy as input URLs (https, public addresses) or is refused
        now, with the reason (422 ``invalid_webhook``)."""
        if self._webhook_targets is None:
            raise InputRejected("webhook", "this server sends no webhooks", code="invalid_webhook")
        try:
            await self._webhook_targets.check(url, field="webhook")
        except InputRejected as refused:
            raise InputRejected("webhook", refused.reason, code="invalid_webhook") from None

    def _settings(
        self,
        request: JobRequest,
        pending: dict[str, PendingInput],
        durations: dict[str, float],
        sizes: dict[str, tuple[int, int]],
    ) -> JobSettings:
        """The job's settings, completed by what the probes learned (``InputRejected`` where they make the
        request impossible: a speech too short to follow, a box outside the image)."""
        seconds = request.speech_seconds(durations)
        speech_frames = speech_frame_count(seconds, self._limits.max_speech_frames)
        if request.follows_speech and speech_frames < 1:
            raise InputRejected(
                pending["audio"].field,
                f"the speech lasts {seconds:.3f} s, less than one video frame (0.04 s), so no video can "
                "match its length",
                code="invalid_audio",
            )
        return request.to_settings(InputFacts(speech_frames, sizes))

    async def _resolve(self, tenant: str, references: dict[str, tuple[str, str]]) -> dict[str, PendingInput]:
        """Each role's reference resolved (URLs downloaded) at once; role → pending input."""
        resolved: dict[str, PendingInput] = {}

        async def resolve(role: str) -> None:
            field, reference = references[role]
            resolved[role] = await self._resolver.resolve(
                reference, kind=_kind(role), tenant=tenant, field=field
            )

        try:
            async with anyio.create_task_group() as group:
                for role in references:
                    group.start_soon(resolve, role)
        except BaseExceptionGroup as group:
            raise group.exceptions[0] from None  # the first failure; the other resolution was cancelled by it
        return resolved

    def _stage(
        self, tenant: str, request_id: str, pending: dict[str, PendingInput]
    ) -> tuple[dict[str, StagedInput], dict[str, float], dict[str, tuple[int, int]]]:
        """In a worker thread: each input's bytes loaded, probed as media, hashed and stored; with each
        audio input's duration and each picture's or video's size (by role)."""
        limits = self._limits
        checked: dict[str, tuple[bytes, PendingInput]] = {}
        durations: dict[str, float] = {}
        sizes: dict[str, tuple[int, int]] = {}
        for role, item in pending.items():
            data = item.load()
            kind = _kind(role)
            if kind is InputKind.IMAGE:
                image = probe_image(data, field=item.field)
                sizes[role] = (image.width, image.height)
            elif kind is InputKind.VIDEO:
                video = probe_video(
                    data,
                    field=item.field,
                    max_seconds=limits.max_video_seconds,
                    max_pixels=limits.max_video_pixels,
                )
                sizes[role] = (video.width, video.height)
            else:
                audio = probe_audio(data, field=item.field, max_seconds=limits.max_audio_seconds)
                durations[role] = audio.duration_seconds
            checked[role] = (data, item)
        staged = {}
        for role, (data, item) in checked.items():
            key = input_key(tenant, request_id, role)
            self._storage.put_bytes(key, data, "application/octet-stream")
            staged[role] = StagedInput(key, hashlib.sha256(data).hexdigest(), len(data), item.source)
        return staged, durations, sizes

    def _unstage(self, inputs: dict[str, StagedInput]) -> None:
        for staged in inputs.values():
            self._storage.delete(staged.key)

    # -- read and cancel ------------------------------------------------------------------------------------

    async def view(self, tenant: str, request_id: str, *, with_download: bool = False) -> JobView:
        """The job, its queue position and (``with_download``, once completed) a signed download URL."""
        record = await self._store.get(request_id, tenant)
        if record is None:
            if await self._store.is_gone(request_id, tenant):
                raise JobGone(request_id)
            raise JobNotFound(request_id)
        now = self._store.now()
        if record.is_expired(now):
            raise JobGone(request_id)
        video_url = None
        if with_download and record.output_key is not None:
            # Signing is local computation (HMAC, or an S3 presign): no I/O on the event loop. A link must not
            # outlive the result: after expires_at the API answers 410 for the job.
            ttl = self._url_ttl
            if record.expires_at is not None:
                ttl = max(1, min(ttl, int(record.expires_at - now)))
            video_url = self._storage.url_for(record.output_key, ttl)
        return JobView(record, await self._store.queue_position(record), video_url)

    async def cancel(self, tenant: str, request_id: str) -> JobRecord:
        """A queued job never runs; a running one ends cancelled at its next step (the record says
        ``cancel_requested`` until then). ``CancelConflict`` for a finished job."""
        await self.view(tenant, request_id)  # 404 / 410 as for any read
        try:
            outcome = await self._store.cancel(request_id, tenant)
        except JobNotFound:  # deleted by the retention sweep since it was read
            raise JobGone(request_id) from None
        return outcome.record

    # -- uploads --------------------------------------------------------------------------------------------

    async def upload(self, tenant: str, data: bytes) -> Upload:
        """An image or audio file kept for later submits, counted against the tenant's byte quota until it
        expires with everything else stored (``UploadQuotaExceeded``)."""
        file_id = new_file_id()
        expires_at = await self._store.reserve_upload(tenant, file_id, len(data))
        try:
            async with self._decode_slots:
                await anyio.to_thread.run_sync(self._store_upload, tenant, file_id, data)
        except BaseException:
            await self._store.forget_upload(tenant, file_id)
            raise
        return Upload(file_id, len(data), self._store.now(), expires_at)

    def _store_upload(self, tenant: str, file_id: str, data: bytes) -> None:
        limits = self._limits
        probe_any_media(
            data,
            max_audio_seconds=limits.max_audio_seconds,
            max_video_seconds=limits.max_video_seconds,
            max_video_pixels=limits.max_video_pixels,
        )
        self._storage.put_bytes(upload_key(tenant, file_id), data, "application/octet-stream")


def _kind(role: str) -> InputKind:
    """What an input role holds: ``image``, ``video``, or speech (``audio``, ``audio2``)."""
    return {"image": InputKind.IMAGE, "video": InputKind.VIDEO}.get(role, InputKind.AUDIO)
