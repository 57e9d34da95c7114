"""bench.serving_overhead's arithmetic: where an HTTP job's seconds went, and the table of fronts."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import httpx
import pytest

from bench import serving_overhead
from bench.serving_overhead import http_job, result_rows
from loadtest.client import ApiClient, job_body

BASE = "http://127.0.0.1:1"


def iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat()


def job_api() -> ApiClient:
    """The API of one job, queued for one poll, then completed with these server-side times and timings."""
    polls = 0

    def answer(request: httpx.Request) -> httpx.Response:
        nonlocal polls
        path = request.url.path
        if request.method == "POST":
            urls = {
                f"{name}_url": f"{BASE}/v1/requests/job-1/{name}" for name in ("status", "result", "cancel")
            }
            return httpx.Response(202, json={"request_id": "job-1", **urls})
        if path.endswith("/status"):
            polls += 1
            if polls == 1:
                return httpx.Response(200, json={**job, "status": "in_queue"})
            return httpx.Response(200, json=finished)
        if path.endswith("/result"):
            timings = {"fetch_inputs": 0.2, "sampling": 3.0, "vae_decode": 5.0, "mux": 1.0, "upload": 0.3}
            return httpx.Response(
                200, json={**finished, "output": {"video": f"{BASE}/v1/outputs/x"}, "timings": timings}
            )
        return httpx.Response(200, content=b"mp4")

    now = time.time()  # the job finished half a second before the second poll saw it
    job = {"request_id": "job-1", "created_at": iso(now - 11.0)}
    finished = {**job, "status": "completed", "started_at": iso(now - 10.5), "finished_at": iso(now - 0.5)}
    client = ApiClient(BASE, "token")
    client.http = httpx.Client(base_url=BASE, transport=httpx.MockTransport(answer))
    return client


def test_an_http_job_splits_into_the_pipelines_stages_and_the_rest(monkeypatch) -> None:
    monkeypatch.setattr(serving_overhead, "POLL_INTERVAL_S", 0.0)
    with job_api() as client:
        job = http_job(client, job_body())
    assert job["queued"] == pytest.approx(0.5)
    assert job["running"] == pytest.approx(10.0)
    assert job["pipeline_stages"] == pytest.approx(9.0)  # fetching inputs and uploading are the server's
    assert job["seen_after_finish"] == pytest.approx(0.5, abs=0.2)


def polls(app: float, bare: float) -> dict:
    medians = {"app": app, "bare_serve": bare, "bare_fastapi_ingress": bare, "bare_fastapi_after_await": bare}
    return {
        "status_polls_median": medians,
        "app_over": {floor: app / bare for floor in serving_overhead.FLOORS},
    }


def test_the_table_has_each_fronts_rows_then_the_first_front_against_the_others() -> None:
    jobs = {"end_to_end_median": {"direct": 10.0, "http": 11.0}, "http_over_direct": 1.1}
    rows = result_rows({"haproxy": {**jobs, **polls(600.0, 650.0)}, "proxy": polls(200.0, 300.0)})
    labels = [row[0] for row in rows]
    assert labels[0] == "haproxy: job end to end (s)"
    assert not any(label.startswith("proxy: job") for label in labels)
    assert rows[-1] == ("app status polls: haproxy vs proxy", 200.0, 600.0, 3.0, "-")
    bare = next(row for row in rows if row[0] == "proxy: status polls (req/s) vs bare Serve")
    assert bare[3] == pytest.approx(2 / 3) and bare[4] == ">= 0.8"
