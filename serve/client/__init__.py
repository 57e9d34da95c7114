"""A typed Python client of the job API, sync (``Client``) and async (``AsyncClient``).

::

    from serve.client import Client, ImageToVideo

    with Client("http://127.0.0.1:8000", token="local-dev-token") as api:
        job = api.submit(ImageToVideo(prompt="a woman is talking", image="me.png", audio="hi.wav"))
        result = api.wait(job, on_progress=lambda s: print(s.status, s.progress))
        api.download(result, "me.mp4")

Requests are the server's own request models (validated here as the server validates them): ``ImageToVideo``
(RunComfy's seed endpoint, fields by readable name or node id), ``TwoSpeakers`` and ``VideoToVideo``. An
input that names an existing local file is uploaded first (``POST /v1/files``) and sent as its file id.
``wait`` follows the job's server-sent events (resuming with ``Last-Event-ID`` after a dropped connection)
or, with ``stream=False``, polls its status. Errors are ``serve.client.errors`` exceptions, one per kind of
answer; a job that ends failed or cancelled raises ``JobFailed`` from ``wait``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Self

import anyio
import httpx
from httpx_sse import EventSource, ServerSentEvent
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from serve.api.schemas import ResultResponse, StatusResponse, SubmitRequest, SubmitResponse
from serve.api.two_speakers import TwoSpeakerRequest
from serve.api.video_to_video import VideoToVideoRequest
from serve.client.errors import (
    ApiError,
    Conflict,
    Gone,
    InvalidRequest,
    JobFailed,
    NotFound,
    RetryLater,
    Unauthorized,
    raise_for,
)

ImageToVideo = SubmitRequest
TwoSpeakers = TwoSpeakerRequest
VideoToVideo = VideoToVideoRequest
JobRequest = ImageToVideo | TwoSpeakers | VideoToVideo
ProgressCallback = Callable[[StatusResponse], None]

_PATHS: dict[type, str] = {
    ImageToVideo: "/v1/models/community/infinite-talk/image-to-video",
    TwoSpeakers: "/v1/models/community/infinite-talk/fast/multi",
    VideoToVideo: "/v1/models/community/infinite-talk/video-to-video",
}
_INPUT_FIELDS: dict[type, tuple[str, ...]] = {
    ImageToVideo: ("image", "audio"),
    TwoSpeakers: ("image", "left_audio", "right_audio"),
    VideoToVideo: ("video", "audio"),
}
_TERMINAL = frozenset({"completed", "failed", "cancelled"})
_RECONNECT_SECONDS = 1.0
_MAX_RECONNECTS = 30

__all__ = [
    "ApiError",
    "AsyncClient",
    "Client",
    "Conflict",
    "Gone",
    "ImageToVideo",
    "InvalidRequest",
    "JobFailed",
    "NotFound",
    "ResultResponse",
    "RetryLater",
    "StatusResponse",
    "SubmitResponse",
    "TwoSpeakers",
    "Unauthorized",
    "VideoToVideo",
    "WebhookVerificationError",
    "verify_webhook",
]


def verify_webhook(secret: str, body: bytes, headers: Mapping[str, str]) -> dict[str, Any]:
    """A webhook delivery's event, once its Standard Webhooks signature checks out against ``secret`` (from
    ``GET /v1/webhooks/secret``) and its timestamp is recent; ``WebhookVerificationError`` otherwise.
    ``body`` must be the raw bytes received."""
    return Webhook(secret).verify(body, dict(headers))


def local_files(request: JobRequest) -> dict[str, Path]:
    """The input fields of ``request`` that name existing local files (to upload first)."""
    found = {}
    for name in _INPUT_FIELDS[type(request)]:
        value = getattr(request, name)
        if "://" not in value and not value.startswith(("data:", "file_")) and Path(value).is_file():
            found[name] = Path(value)
    return found


def request_body(request: JobRequest, uploaded: dict[str, str]) -> dict[str, Any]:
    return request.model_copy(update=uploaded).model_dump(mode="json", by_alias=True, exclude_defaults=True)


def _request_id(job: str | SubmitResponse | StatusResponse) -> str:
    return job if isinstance(job, str) else job.request_id


def _status_of(event: ServerSentEvent) -> StatusResponse:
    model = ResultResponse if event.event == "result" else StatusResponse
    return model.model_validate_json(event.data)


def _finished(result: ResultResponse) -> ResultResponse:
    if result.status != "completed":
        raise JobFailed(result)
    return result


def _video_url(result: ResultResponse) -> str:
    if result.output is None:
        raise ValueError(f"job {result.request_id} has no video ({result.status})")
    return result.output.video


class Client:
    """One tenant's connection to the API (a bearer token), over a keep-alive connection pool."""

    def __init__(self, base_url: str, token: str | None = None, *, timeout: float = 60.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = self.http.request(method, path, **kwargs)
        raise_for(response)
        return response

    def upload(self, file: str | Path | bytes, filename: str | None = None) -> str:
        """Upload an image, audio or video file; its file id, for any input field of this tenant's jobs."""
        data = file if isinstance(file, bytes) else Path(file).read_bytes()
        name = filename or (None if isinstance(file, bytes) else Path(file).name)
        params = {"filename": name} if name else None
        return self._call("POST", "/v1/files", content=data, params=params).json()["file_id"]

    def submit(self, request: JobRequest, *, idempotency_key: str | None = None) -> SubmitResponse:
        uploaded = {name: self.upload(path) for name, path in local_files(request).items()}
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        response = self._call(
            "POST", _PATHS[type(request)], json=request_body(request, uploaded), headers=headers
        )
        return SubmitResponse.model_validate(response.json())

    def status(self, job: str | SubmitResponse) -> StatusResponse:
        return StatusResponse.model_validate(
            self._call("GET", f"/v1/requests/{_request_id(job)}/status").json()
        )

    def result(self, job: str | SubmitResponse) -> ResultResponse:
        return ResultResponse.model_validate(
            self._call("GET", f"/v1/requests/{_request_id(job)}/result").json()
        )

    def cancel(self, job: str | SubmitResponse) -> StatusResponse:
        response = self._call("POST", f"/v1/requests/{_request_id(job)}/cancel")
        return StatusResponse.model_validate(response.json())

    def events(self, job: str | SubmitResponse, last_event_id: str | None = None) -> Iterator[StatusResponse]:
        """The job's status changes as they happen, ending with its ``ResultResponse``; a dropped connection
        is resumed from the last event seen (up to 30 tries in a row)."""
        path = f"/v1/requests/{_request_id(job)}/events"
        failures = 0
        while True:
            headers = {
                "Accept": "text/event-stream",
                **({"Last-Event-ID": last_event_id} if last_event_id else {}),
            }
            try:
                with self.http.stream(
                    "GET", path, headers=headers, timeout=httpx.Timeout(60.0, read=None)
                ) as response:
                    if not response.is_success:
                        response.read()
                        raise_for(response)
                    for event in EventSource(response).iter_sse():
                        if event.event not in ("status", "result"):
                            continue
                        last_event_id, failures = event.id or last_event_id, 0
                        yield _status_of(event)
                        if event.event == "result":
                            return
            except httpx.TransportError:
                failures += 1
                if failures > _MAX_RECONNECTS:
                    raise
                time.sleep(_RECONNECT_SECONDS)

    def wait(
        self,
        job: str | SubmitResponse,
        *,
        on_progress: ProgressCallback | None = None,
        stream: bool = True,
        poll_seconds: float = 1.0,
        timeout: float | None = None,
    ) -> ResultResponse:
        """Until the job ends: its result when completed, else ``JobFailed``. ``on_progress`` sees every
        status on the way (each change with ``stream``, each poll without)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if stream:
            for status in self.events(job):
                if on_progress is not None:
                    on_progress(status)
                if isinstance(status, ResultResponse):
                    return _finished(status)
                if deadline is not None and time.monotonic() > deadline:
                    break
            raise TimeoutError(f"job {_request_id(job)} did not end within {timeout} s")
        while deadline is None or time.monotonic() < deadline:
            status = self.result(job)
            if on_progress is not None:
                on_progress(status)
            if status.status in _TERMINAL:
                return _finished(status)
            time.sleep(poll_seconds)
        raise TimeoutError(f"job {_request_id(job)} did not end within {timeout} s")

    def download(self, result: ResultResponse, path: str | Path) -> Path:
        """Write the completed job's MP4 to ``path``."""
        target = Path(path)
        with self.http.stream("GET", _video_url(result)) as response:
            if not response.is_success:
                response.read()
                raise_for(response)
            with target.open("wb") as file:
                for chunk in response.iter_bytes():
                    file.write(chunk)
        return target


class AsyncClient:
    """``Client`` for asyncio programs: the same methods, awaited."""

    def __init__(self, base_url: str, token: str | None = None, *, timeout: float = 60.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.AsyncClient(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = await self.http.request(method, path, **kwargs)
        raise_for(response)
        return response

    async def upload(self, file: str | Path | bytes, filename: str | None = None) -> str:
        data = file if isinstance(file, bytes) else await anyio.Path(file).read_bytes()
        name = filename or (None if isinstance(file, bytes) else Path(file).name)
        params = {"filename": name} if name else None
        return (await self._call("POST", "/v1/files", content=data, params=params)).json()["file_id"]

    async def submit(self, request: JobRequest, *, idempotency_key: str | None = None) -> SubmitResponse:
        uploaded = {name: await self.upload(path) for name, path in local_files(request).items()}
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        response = await self._call(
            "POST", _PATHS[type(request)], json=request_body(request, uploaded), headers=headers
        )
        return SubmitResponse.model_validate(response.json())

    async def status(self, job: str | SubmitResponse) -> StatusResponse:
        response = await self._call("GET", f"/v1/requests/{_request_id(job)}/status")
        return StatusResponse.model_validate(response.json())

    async def result(self, job: str | SubmitResponse) -> ResultResponse:
        response = await self._call("GET", f"/v1/requests/{_request_id(job)}/result")
        return ResultResponse.model_validate(response.json())

    async def cancel(self, job: str | SubmitResponse) -> StatusResponse:
        response = await self._call("POST", f"/v1/requests/{_request_id(job)}/cancel")
        return StatusResponse.model_validate(response.json())

    async def wait(
        self,
        job: str | SubmitResponse,
        *,
        on_progress: ProgressCallback | None = None,
        poll_seconds: float = 1.0,
        timeout: float | None = None,
    ) -> ResultResponse:
        """Until the job ends (polling its result); its result when completed, else ``JobFailed``."""
        with anyio.fail_after(timeout):
            while True:
                status = await self.result(job)
                if on_progress is not None:
                    on_progress(status)
                if status.status in _TERMINAL:
                    return _finished(status)
                await anyio.sleep(poll_seconds)

    async def download(self, result: ResultResponse, path: str | Path) -> Path:
        target = anyio.Path(path)
        async with self.http.stream("GET", _video_url(result)) as response:
            if not response.is_success:
                await response.aread()
                raise_for(response)
            async with await target.open("wb") as file:
                async for chunk in response.aiter_bytes():
                    await file.write(chunk)
        return Path(path)
