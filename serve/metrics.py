"""Prometheus metrics of the job service, kept in Redis so every ingress replica reports the same numbers.

Job outcomes happen in sampler replicas, the reaper, or an ingress (a cancel), and any ingress replica may
be the one scraped. So counters and histogram buckets are Redis hash increments, and the ingress's
``/metrics`` reads them at scrape time (``JobMetricsCollector``): the figures are global and consistent
whichever replica answers. Submits and endings are counted by the job store's scripts inside the transition
itself, so a job counts once whichever process ended it; samplers add the durations. Per-replica figures
(sampler steps/s) go through Ray's metrics API and are scraped from Ray's metrics endpoint instead
(docs/architecture.md, "Metrics").
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from serve.jobs.keys import Keys
from serve.jobs.records import JobStatus
from serve.jobs.store import JobStore

PREFIX = "infinitetalk"
JOB_BUCKETS = (5, 10, 20, 30, 45, 60, 90, 120, 180, 240, 300, 450, 600, 900, 1200, 1800, 3600)
STAGE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
FETCH_FAILURES = "input_fetch_failures"


def _bucket_label(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(float(bound))


class MetricsRecorder:
    """Writes histogram observations to Redis and reads every figure back (one round trip per write)."""

    def __init__(self, client: redis.Redis, namespace: str = PREFIX) -> None:
        self._redis = client
        self._keys = Keys(namespace)

    def _hist_key(self, name: str, label: str) -> str:
        return f"{self._keys.metric_histogram(name)}:{label}"

    def observe(self, name: str, value: float, buckets: Sequence[float], label: str = "") -> None:
        pipe = self._redis.pipeline(transaction=True)
        key = self._hist_key(name, label)
        for bound in (*buckets, math.inf):
            if value <= bound:
                pipe.hincrby(key, _bucket_label(bound), 1)
        pipe.hincrbyfloat(key, "sum", value)
        pipe.hincrby(key, "count", 1)
        pipe.sadd(self._keys.metric_histogram(name), label)
        pipe.execute()

    def record_job_duration(self, seconds: float) -> None:
        self.observe("job_duration_seconds", seconds, JOB_BUCKETS)

    def record_stages(self, timings: Mapping[str, float]) -> None:
        for stage, seconds in timings.items():
            self.observe("stage_duration_seconds", seconds, STAGE_BUCKETS, label=stage)

    def counter(self, name: str) -> dict[str, float]:
        raw = self._redis.hgetall(self._keys.metric_counter(name))
        return {_text(k): float(v) for k, v in raw.items()}

    def histogram(
        self, name: str, buckets: Sequence[float]
    ) -> dict[str, tuple[list[tuple[str, float]], float]]:
        """label → (cumulative buckets, sum) in Prometheus' form."""
        result = {}
        for label in sorted(_text(m) for m in self._redis.smembers(self._keys.metric_histogram(name))):
            raw = {_text(k): float(v) for k, v in self._redis.hgetall(self._hist_key(name, label)).items()}
            bucket_values = [(_bucket_label(b), raw.get(_bucket_label(b), 0.0)) for b in (*buckets, math.inf)]
            result[label] = (bucket_values, raw.get("sum", 0.0))
        return result


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class JobMetricsCollector(Collector):
    """Reads the global job figures from Redis when ``/metrics`` is scraped."""

    def __init__(self, store: JobStore, recorder: MetricsRecorder) -> None:
        self._store = store
        self._recorder = recorder

    def collect(self) -> Iterable:
        counts = self._store.counts()
        yield GaugeMetricFamily(
            f"{PREFIX}_queue_depth", "Jobs waiting in the queue", value=counts[JobStatus.IN_QUEUE]
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_jobs_in_progress", "Jobs a sampler is running", value=counts[JobStatus.IN_PROGRESS]
        )
        jobs = CounterMetricFamily(f"{PREFIX}_jobs", "Jobs that reached a terminal state", labels=["state"])
        finished = self._recorder.counter("jobs")
        for state in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED):
            jobs.add_metric([state.value], finished.get(state.value, 0.0))
        yield jobs
        submitted = CounterMetricFamily(f"{PREFIX}_jobs_submitted", "Jobs accepted by the API")
        submitted.add_metric([], self._recorder.counter("jobs_submitted").get("", 0.0))
        yield submitted
        failures = CounterMetricFamily(
            f"{PREFIX}_{FETCH_FAILURES}", "Input references refused or failed at submit", labels=["reason"]
        )
        for reason, value in sorted(self._recorder.counter(FETCH_FAILURES).items()):
            failures.add_metric([reason], value)
        yield failures
        webhooks = CounterMetricFamily(
            f"{PREFIX}_webhook_attempts",
            "Webhook delivery attempts by outcome (delivered, retry, gave_up)",
            labels=["outcome"],
        )
        for outcome, value in sorted(self._recorder.counter("webhook_attempts").items()):
            webhooks.add_metric([outcome], value)
        yield webhooks
        pending = GaugeMetricFamily(
            f"{PREFIX}_webhook_pending", "Webhook deliveries not yet delivered or given up"
        )
        pending.add_metric([], float(self._store.webhook_backlog()))
        yield pending
        yield from self._histogram(
            "job_duration_seconds", "Submit to end of jobs a sampler finished", JOB_BUCKETS, None
        )
        yield from self._histogram(
            "stage_duration_seconds", "Time per pipeline stage", STAGE_BUCKETS, "stage"
        )

    def _histogram(self, name: str, doc: str, buckets: Sequence[float], label: str | None) -> Iterable:
        family = HistogramMetricFamily(f"{PREFIX}_{name}", doc, labels=[label] if label else [])
        for value, (bucket_values, total) in self._recorder.histogram(name, buckets).items():
            family.add_metric([value] if label else [], bucket_values, total)
        yield family
