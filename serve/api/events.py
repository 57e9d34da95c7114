"""``GET /v1/requests/{id}/events``: a job's state as a server-sent event stream, until it ends.

Every change of a job's state is an entry of its Redis stream (``events:<id>``, written by the job store's
own scripts in the same transition), so the stream is a log, not a poll: a client that reconnects with
``Last-Event-ID`` gets every change after that id, in order, and never one twice. Events:

* ``status``: a ``StatusResponse`` (queued with its position, in progress with progress and ETA), with the
  stream id as its ``id``. A queue position that moves while nothing else changes is sent without an id
  (it is not a change of the job itself; a reconnect asks again).
* ``result``: the ``ResultResponse`` once the job is terminal (completed with its video URL, failed, or
  cancelled), after which the server closes the stream.

Resources are bounded per ingress replica: at most ``max_streams`` open streams (503 beyond), each polling
its job's stream every ``poll_seconds`` with one pipelined read (no connection held between polls), a
comment line every ``heartbeat_seconds`` so proxies do not cut an idle stream, and at most
``max_stream_seconds`` per connection (the client reconnects with ``Last-Event-ID``).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

import anyio
from fastapi import FastAPI, Header, Request
from fastapi.responses import StreamingResponse

from serve.api.common import RETRY_AFTER_NOT_READY_SECONDS, ApiContext, absolute_url, known_request_id
from serve.api.errors import BadRequest, ServiceUnavailable, error_responses
from serve.api.schemas import ResultResponse, StatusResponse
from serve.api.security import Tenant
from serve.jobs.async_store import AsyncJobStore
from serve.jobs.records import EVENT_FIELDS, record_at

STREAM_ID = re.compile(r"^[0-9]{1,20}-[0-9]{1,20}\Z")


@dataclass(frozen=True)
class StreamLimits:
    poll_seconds: float = 0.5
    heartbeat_seconds: float = 15.0
    max_stream_seconds: float = 3600.0


def format_event(name: str, data: str, event_id: str | None = None) -> str:
    lines = [f"id: {event_id}"] if event_id is not None else []
    return "\n".join([*lines, f"event: {name}", f"data: {data}", "", ""])


async def job_events(
    store: AsyncJobStore,
    tenant: str,
    request_id: str,
    last_event_id: str | None,
    result_body: Callable[[str], Awaitable[str]],
    limits: StreamLimits,
) -> AsyncIterator[str]:
    """The stream's text, event by event. ``result_body(request_id)`` is the terminal event's JSON (the
    result endpoint's body, with a fresh download link)."""
    started = last_sent = time.monotonic()
    cursor = last_event_id
    position: int | None = None
    while time.monotonic() - started < limits.max_stream_seconds:
        changes = await store.changes(request_id, tenant, cursor)
        if changes is None:  # deleted after its retention while watched
            return
        stored, entries = changes
        if not entries and cursor is None:  # written before job streams existed: the state now, no id
            entries = [("", {key: value for key, value in stored.items() if key in EVENT_FIELDS})]
        for event_id, change in entries:
            record = record_at(stored, change)
            event_id_or_none = event_id or None
            if record.is_terminal:
                yield format_event("result", await result_body(request_id), event_id_or_none)
                return
            position = await store.queue_position(record)
            body = StatusResponse.from_record(record, queue_position=position)
            yield format_event("status", body.model_dump_json(exclude_none=True), event_id_or_none)
            cursor, last_sent = event_id or cursor or "0-0", time.monotonic()
        if not entries and position is not None:
            record = record_at(stored, {key: value for key, value in stored.items() if key in EVENT_FIELDS})
            moved = await store.queue_position(record)
            if moved is not None and moved != position:
                position = moved
                body = StatusResponse.from_record(record, queue_position=position)
                yield format_event("status", body.model_dump_json(exclude_none=True))
                last_sent = time.monotonic()
        if time.monotonic() - last_sent >= limits.heartbeat_seconds:
            yield ": keep-alive\n\n"
            last_sent = time.monotonic()
        await anyio.sleep(limits.poll_seconds)
    yield format_event("reconnect", json.dumps({"reason": "max_stream_seconds"}))


def add_event_routes(api: FastAPI, context: ApiContext) -> None:
    """``GET /v1/requests/{id}/events`` on ``api``."""
    events = context.config.events
    stream_slots = anyio.CapacityLimiter(events.max_streams)
    stream_limits = StreamLimits(events.poll_seconds, events.heartbeat_seconds, events.max_stream_seconds)

    @api.get(
        "/v1/requests/{request_id}/events",
        response_class=StreamingResponse,
        responses={
            200: {
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
                "description": "Extension: server-sent events, `status` on each change, then `result`; "
                "resume with Last-Event-ID",
            },
            **error_responses(400, 401, 404, 410, 503),
        },
        summary="Stream a job's status changes until it ends (server-sent events)",
    )
    async def job_event_stream(
        request_id: str,
        request: Request,
        tenant: Tenant,
        last_event_id: Annotated[str | None, Header(max_length=50)] = None,
    ) -> StreamingResponse:
        await context.jobs.view(tenant, known_request_id(request_id))  # 404 / 410 before the stream starts
        if last_event_id is not None and not STREAM_ID.match(last_event_id.strip()):
            raise BadRequest(
                "Last-Event-ID is not an id this stream sent.",
                details=[{"field": "Last-Event-ID", "message": "expected <milliseconds>-<sequence>"}],
            )
        # The stream's body runs in another task than this handler: the slot is held on behalf of a token.
        slot = object()
        try:
            stream_slots.acquire_on_behalf_of_nowait(slot)
        except anyio.WouldBlock:
            raise ServiceUnavailable(
                "Too many open event streams; poll the status URL or retry.",
                code="too_many_streams",
                retry_after=RETRY_AFTER_NOT_READY_SECONDS,
            ) from None

        async def result_body(job_id: str) -> str:
            view = await context.jobs.view(tenant, job_id, with_download=True)
            url = None if view.video_url is None else absolute_url(context.config, request, view.video_url)
            body = ResultResponse.from_record(view.record, queue_position=view.queue_position, video_url=url)
            return body.model_dump_json(exclude_none=True)

        async def stream() -> AsyncIterator[str]:
            try:
                async for text in job_events(
                    context.store,
                    tenant,
                    request_id,
                    None if last_event_id is None else last_event_id.strip(),
                    result_body,
                    stream_limits,
                ):
                    yield text
            finally:
                stream_slots.release_on_behalf_of(slot)

        # No caching, and no buffering by nginx-style proxies in front: each event goes out as written.
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)
