"""``GET /v1/requests/{id}/events``: the job's changes as server-sent events, from its Redis stream."""

from __future__ import annotations

import json
import threading

import pytest
from api_fixtures import ALPHA, BETA, OkEngine, build_stack
from fastapi.testclient import TestClient

from serve.config import EventsConfig

FAST = EventsConfig(poll_seconds=0.02, heartbeat_seconds=0.2, max_streams=2)


@pytest.fixture
def stack(redis_conn, tmp_path):
    return build_stack(redis_conn, tmp_path, overrides={"events": FAST})


@pytest.fixture
def http(stack):
    with TestClient(stack.app(), raise_server_exceptions=False) as client:
        yield client


def read_events(response, until: str = "result", count: int | None = None) -> list[dict]:
    """Parse events off a streaming response until one named ``until`` (or ``count`` events); later calls on
    the same response go on where the last one stopped."""
    if not hasattr(response, "sse_lines"):
        response.sse_lines = response.iter_lines()
    events: list[dict] = []
    event: dict = {}
    for line in response.sse_lines:
        if line.startswith(":"):
            events.append({"event": "comment"})
            if count is not None and len(events) >= count:
                return events
        elif line == "":
            if event:
                events.append(event)
                if event.get("event") == until or (count is not None and len(events) >= count):
                    return events
                event = {}
        else:
            field, _, value = line.partition(": ")
            event[field] = json.loads(value) if field == "data" else value
    return events


def _real(events: list[dict]) -> list[dict]:
    return [e for e in events if e["event"] != "comment"]


def test_a_client_sees_queued_then_progress_then_the_result(http, stack, redis_conn) -> None:
    request_id = stack.enqueue()
    with http.stream("GET", f"/v1/requests/{request_id}/events", headers=ALPHA) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        first = read_events(response, count=1)
        assert first[0]["event"] == "status" and first[0]["data"]["status"] == "in_queue"
        assert first[0]["data"]["queue_position"] == 0
        worker = threading.Thread(target=stack.claim_and_run, args=(OkEngine(),))
        worker.start()
        rest = _real(read_events(response))
        worker.join()
    statuses = [(e["event"], e["data"]["status"], e["data"].get("progress")) for e in rest]
    assert statuses[0] == ("status", "in_progress", 0.0)
    assert statuses[-1][:2] == ("result", "completed")
    assert rest[-1]["data"]["output"]["video"].startswith("http://testserver/v1/outputs/alpha/")
    # One event per change the store logged, in its order: the stream is the log, not a sample of it.
    logged = [entry_id.decode() for entry_id, _ in redis_conn.xrange(stack.store.keys.events(request_id))]
    assert [e["id"] for e in [first[0], *rest]] == logged


def test_a_resumed_stream_has_no_gap_and_no_repeat(http, stack, redis_conn) -> None:
    request_id = stack.enqueue()
    with http.stream("GET", f"/v1/requests/{request_id}/events", headers=ALPHA) as response:
        (queued,) = read_events(response, count=1)
    stack.claim_and_run(OkEngine())  # every change after the client dropped
    headers = {**ALPHA, "Last-Event-ID": queued["id"]}
    with http.stream("GET", f"/v1/requests/{request_id}/events", headers=headers) as response:
        resumed = _real(read_events(response))
    stream = redis_conn.xrange(stack.store.keys.events(request_id))
    after = [entry_id.decode() for entry_id, _ in stream if entry_id.decode() > queued["id"]]
    assert [e["id"] for e in resumed] == after
    assert resumed[-1]["event"] == "result" and resumed[-1]["data"]["status"] == "completed"


def test_a_finished_job_streams_its_result_and_closes(http, stack) -> None:
    request_id = stack.enqueue()
    stack.claim_and_run(OkEngine())
    with http.stream("GET", f"/v1/requests/{request_id}/events", headers=ALPHA) as response:
        events = _real(read_events(response))
    assert [e["event"] for e in events] == ["result"]


def test_another_tenant_gets_404_and_bad_resume_ids_400(http, stack) -> None:
    request_id = stack.enqueue()
    assert http.get(f"/v1/requests/{request_id}/events", headers=BETA).status_code == 404
    assert http.get(f"/v1/requests/{'f' * 32}/events", headers=ALPHA).status_code == 404
    response = http.get(f"/v1/requests/{request_id}/events", headers={**ALPHA, "Last-Event-ID": "yesterday"})
    assert response.status_code == 400 and response.json()["error"]["details"][0]["field"] == "Last-Event-ID"


def test_idle_streams_get_heartbeats_and_the_open_streams_are_bounded(http, stack) -> None:
    request_id = stack.enqueue()
    url = f"/v1/requests/{request_id}/events"
    with http.stream("GET", url, headers=ALPHA) as one, http.stream("GET", url, headers=ALPHA) as two:
        assert [e["event"] for e in read_events(one, count=2)] == ["status", "comment"]
        read_events(two, count=1)
        third = http.get(url, headers=ALPHA)
        assert third.status_code == 503 and third.json()["error"]["code"] == "too_many_streams"
    with http.stream("GET", url, headers=ALPHA) as again:  # slots come back when streams close
        assert read_events(again, count=1)[0]["data"]["status"] == "in_queue"
