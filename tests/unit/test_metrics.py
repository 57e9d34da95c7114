"""Job metrics kept in Redis: the recorder's arithmetic, and /metrics giving the same global figures whichever
ingress replica is scraped."""

from __future__ import annotations

import math

import pytest
from api_fixtures import ALPHA, SEED_BODY, FailingEngine, OkEngine, build_stack
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from pipeline.errors import AudioError
from serve.api.routes import MODEL_PATH
from serve.jobs.records import JobStatus
from serve.metrics import STAGE_BUCKETS, MetricsRecorder


@pytest.fixture
def stack(redis_conn, tmp_path):
    return build_stack(redis_conn, tmp_path)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Exposition text → {(sample name, sorted labels): value}."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(http: TestClient) -> dict:
    response = http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return samples(response.text)


def test_histogram_buckets_are_cumulative(redis_conn) -> None:
    recorder = MetricsRecorder(redis_conn, "metricstest")
    for value in (0.03, 0.3, 700.0):
        recorder.observe("stage_duration_seconds", value, STAGE_BUCKETS, label="sampling")
    recorder.observe("stage_duration_seconds", 0.01, STAGE_BUCKETS, label="mux")
    histograms = recorder.histogram("stage_duration_seconds", STAGE_BUCKETS)
    assert sorted(histograms) == ["mux", "sampling"]
    buckets, total = histograms["sampling"]
    by_bound = dict(buckets)
    assert [label for label, _ in buckets] == [repr(float(b)) for b in STAGE_BUCKETS] + ["+Inf"]
    assert (by_bound["0.01"], by_bound["0.05"], by_bound["0.25"], by_bound["0.5"]) == (0, 1, 1, 2)
    assert (by_bound["600.0"], by_bound["+Inf"]) == (2, 3)
    assert total == pytest.approx(700.33)
    assert dict(histograms["mux"][0])["0.01"] == 1  # a value on a bound falls in that bucket
    values = [value for _, value in buckets]
    assert values == sorted(values)


def test_durations_and_namespaces(redis_conn) -> None:
    one, other = MetricsRecorder(redis_conn, "ns-one"), MetricsRecorder(redis_conn, "ns-two")
    one.record_job_duration(12.0)
    _, total = one.histogram("job_duration_seconds", (10, 20))[""]
    assert total == 12.0
    assert other.counter("jobs") == {} and other.histogram("job_duration_seconds", (10,)) == {}


def test_metrics_follow_the_jobs(stack) -> None:
    with TestClient(stack.app(), raise_server_exceptions=False) as http:
        before = scrape(http)
        assert before[("infinitetalk_queue_depth", ())] == 0
        assert before[("infinitetalk_jobs_total", (("state", "completed"),))] == 0
        assert not any(name.startswith("infinitetalk_job_duration_seconds") for name, _ in before)

        ids = [http.post(MODEL_PATH, json=SEED_BODY, headers=ALPHA).json()["request_id"] for _ in range(4)]
        queued = scrape(http)
        assert queued[("infinitetalk_queue_depth", ())] == 4
        assert queued[("infinitetalk_jobs_submitted_total", ())] == 4

        stack.clock.advance(7.0)  # 7 s from submit to completion
        assert stack.claim_and_run(OkEngine(), "replica-1:run1") is JobStatus.COMPLETED
        stack.clock.advance(10.0)  # 17 s from submit to failure
        stack.claim_and_run(FailingEngine(AudioError("125_audio: silent")), "replica-1:run2")
        assert http.post(f"/v1/requests/{ids[2]}/cancel", headers=ALPHA).status_code == 200
        assert stack.store.claim_next("worker-x").request_id == ids[3]
        http.post(MODEL_PATH, json={**SEED_BODY, "284_image": "nope.png"}, headers=ALPHA)

        after = scrape(http)
    assert after[("infinitetalk_queue_depth", ())] == 0
    assert after[("infinitetalk_jobs_in_progress", ())] == 1
    for state, value in (("completed", 1), ("failed", 1), ("cancelled", 1)):
        assert after[("infinitetalk_jobs_total", (("state", state),))] == value, state
    assert after[("infinitetalk_jobs_submitted_total", ())] == 4
    assert after[("infinitetalk_input_fetch_failures_total", (("reason", "invalid_input_reference"),))] == 1
    # Histograms appear once jobs ended (the sampler records completed and failed ones): 7 s and 17 s.
    assert after[("infinitetalk_job_duration_seconds_count", ())] == 2
    assert after[("infinitetalk_job_duration_seconds_bucket", (("le", "5.0"),))] == 0
    assert after[("infinitetalk_job_duration_seconds_bucket", (("le", "10.0"),))] == 1
    assert after[("infinitetalk_job_duration_seconds_bucket", (("le", "20.0"),))] == 2
    assert after[("infinitetalk_job_duration_seconds_sum", ())] == pytest.approx(24.0, abs=0.01)
    # The failed job spent time on its inputs at submit, and then no other stage.
    for stage, count in (("submit_inputs", 2), ("fetch_inputs", 1), ("sampling", 1), ("upload", 1)):
        labels = (("stage", stage),)
        assert after[("infinitetalk_stage_duration_seconds_count", labels)] == count, stage
    sampling = (("le", "0.5"), ("stage", "sampling"))
    assert after[("infinitetalk_stage_duration_seconds_bucket", sampling)] == 1
    assert after[("infinitetalk_stage_duration_seconds_sum", (("stage", "sampling"),))] == pytest.approx(0.3)
    assert not any(math.isnan(value) for value in after.values())


def test_every_ingress_replica_reports_the_same_numbers(stack, redis_conn, tmp_path) -> None:
    # Two separately built apps (two ingress replicas) on one Redis; each has its own registry and storage.
    other = build_stack(redis_conn, tmp_path / "replica-2", clock=stack.clock)
    with (
        TestClient(stack.app(), raise_server_exceptions=False) as first,
        TestClient(other.app(), raise_server_exceptions=False) as second,
    ):
        first.post(MODEL_PATH, json=SEED_BODY, headers=ALPHA)
        second.post(MODEL_PATH, json=SEED_BODY, headers=ALPHA)
        assert stack.claim_and_run(OkEngine()) is JobStatus.COMPLETED
        texts = [client.get("/metrics").text for client in (first, second)]
        assert texts[0] == texts[1]
        figures = samples(texts[0])
        assert figures[("infinitetalk_jobs_submitted_total", ())] == 2
        assert figures[("infinitetalk_queue_depth", ())] == 1
        assert figures[("infinitetalk_jobs_total", (("state", "completed"),))] == 1
        # Building another app adds no second collector to anything shared: the figures do not double.
        third = TestClient(build_stack(redis_conn, tmp_path / "replica-3").app())
        assert samples(third.get("/metrics").text) == figures
