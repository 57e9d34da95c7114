"""bench.serving_overhead's arithmetic: where an HTTP job's seconds went, and the table of fronts."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

from bench import serving_overhead
from bench.serving_overhead import http_job, result_rows


class Response:
    def __init__(self, body: dict) -> None:
        self.body = body

    def json(self) -> dict:
        return self.body

    def raise_for_status(self) -> None:
        return None


def iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat()


class FakeClient:
    """A job that is queued for one poll, then completed with these server-side times and stage timings."""

    def __init__(self) -> None:
        self.polls = 0
        self.http = SimpleNamespace(get=lambda url: Response({}))

    def submit_accepted(self, body: dict) -> str:
        return "job-1"

    def status(self, request_id: str) -> Response:
        self.polls += 1
        if self.polls == 1:
            return Response({"status": "in_queue"})
        now = time.time()  # the job finished half a second before this poll saw it
        times = {"created_at": now - 11.0, "started_at": now - 10.5, "finished_at": now - 0.5}
        return Response({"status": "completed", **{name: iso(value) for name, value in times.items()}})

    def result(self, request_id: str) -> Response:
        timings = {"fetch_inputs": 0.2, "sampling": 3.0, "vae_decode": 5.0, "mux": 1.0, "upload": 0.3}
        return Response({"output": {"video": "http://127.0.0.1:1/v1/outputs/x"}, "timings": timings})


def test_an_http_job_splits_into_the_pipelines_stages_and_the_rest(monkeypatch) -> None:
    monkeypatch.setattr(serving_overhead, "POLL_INTERVAL_S", 0.0)
    job = http_job(FakeClient(), {})
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
