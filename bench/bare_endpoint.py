"""Floors for the status-poll benchmark, run beside the app in the same Ray, behind the same proxy: a
status-sized JSON body with no auth and no Redis, from

* ``app``: a plain Ray Serve deployment (``__call__``), and
* ``fastapi_app``: the same answer from a FastAPI route behind ``@serve.ingress``, the way the app's
  ingress is built, which tells Serve's ASGI-ingress cost apart from the app's own handler; and from a
  route that yields to the event loop once before answering (``/status-after-await``), as any handler
  that awaits I/O does. Serve starts a task per request that asks the proxy actor for the request's body
  and disconnect; it gets to run (an actor call) only when the handler yields, so this route tells that
  cost apart from the app's own work.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import FastAPI
from ray import serve
from starlette.requests import Request

STATUS_BODY = {
    "request_id": "0" * 32,
    "status": "completed",
    "created_at": "2026-01-01T00:00:00Z",
    "started_at": "2026-01-01T00:00:01Z",
    "finished_at": "2026-01-01T00:00:41Z",
    "progress": 1.0,
    "attempt": 1,
}
# No CPU reservation: the local stack's three deployments already reserve every core of a 2-core machine.
_OPTIONS: dict[str, Any] = {
    "num_replicas": 1,
    "max_ongoing_requests": 200,
    "ray_actor_options": {"num_cpus": 0},
}


@serve.deployment(name="BareStatus", **_OPTIONS)
class BareStatus:
    async def __call__(self, request: Request) -> dict[str, Any]:
        return STATUS_BODY


_fastapi = FastAPI()


@_fastapi.get("/status")
async def _status() -> dict[str, Any]:
    return STATUS_BODY


@_fastapi.get("/status-after-await")
async def _status_after_await() -> dict[str, Any]:
    await asyncio.sleep(0)
    return STATUS_BODY


@serve.deployment(name="BareFastAPIStatus", **_OPTIONS)
@serve.ingress(_fastapi)
class BareFastAPIStatus:
    pass


app = BareStatus.bind()
fastapi_app = BareFastAPIStatus.bind()
