"""Prometheus metrics of the job service, kept in Redis so every ingress replica reports the same numbers.

Job outcomes and latencies happen in sampler replicas, submissions and cancels in ingress replicas, and any
ingress replica may be the one scraped. So counters and histogram buckets are Redis hash increments, and the
ingress's ``/metrics`` reads them at scrape time (``JobMetricsCollector``): the figures are global and
consistent whichever replica answers. Per-replica figures (sampler steps/s) go through Ray's metrics API and
are scraped from Ray's metrics endpoint instead (docs/architecture.md, "Metrics").
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from serve.jobs import JobStatus, JobStore

PREFIX = "infinitetalk"
JOB_BUCKETS = (5, 10, 20, 30, 45, 60, 90, 120, 180, 240, 300, 450, 600, 900, 1200, 1800, 3600)
STAGE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)


def _bucket_label(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(float(bound))


class MetricsRecorder:
    """Writes counter and histogram increments to Redis (one round trip per observation)."""

    def __init__(self, client: redis.Redis, namespace: str = PREFIX) -> None:
        self._redis = client
        self._key = f"{{{namespace}}}:metrics"

    def _hist_key(self, name: str, label: str) -> str:
        return f"{self._key}:hist:{name}:{label}"

    def count(self, name: str, label: str = "", amount: int = 1) -> None:
        self._redis.hincrby(f"{self._key}:counter:{name}", label, amount)

    def observe(self, name: str, value: float, buckets: Sequence[float], label: str = "") -> None:
        pipe = self._redis.pipeline(transaction=True)
        key = self._hist_key(name, label)
        for bound in (*buckets, math.inf):
            if value <= bound:
                pipe.hincrby(key, _bucket_label(bound), 1)
        pipe.hincrbyfloat(key, "sum", value)
        pipe.hincrby(key, "count", 1)
        pipe.sadd(f"{self._key}:hist:{name}", label)
        pipe.execute()

    def record_job_finished(self, state: JobStatus, seconds: float | None = None) -> None:
        self.count("jobs", state.value)
        if seconds is not None:
            self.observe("job_duration_seconds", seconds, JOB_BUCKETS)

    def record_stages(self, timings: Mapping[str, float]) -> None:
        for stage, seconds in timings.items():
            self.observe("stage_duration_seconds", seconds, STAGE_BUCKETS, label=stage)

    def record_fetch_failure(self, reason: str) -> None:
        self.count("input_fetch_failures", reason)

    def counter(self, name: str) -> dict[str, float]:
        raw = self._redis.hgetall(f"{self._key}:counter:{name}")
        return {_text(k): float(v) for k, v in raw.items()}

    def histogram(
        self, name: str, buckets: Sequence[float]
    ) -> dict[str, tuple[list[tuple[str, float]], float]]:
        """label → (cumulative buckets, sum) in Prometheus' form."""
        result = {}
        for label in sorted(_text(m) for m in self._redis.smembers(f"{self._key}:hist:{name}")):
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
            f"{PREFIX}_input_fetch_failures",
            "Input references refused or failed at submit",
            labels=["reason"],
        )
        for reason, value in sorted(self._recorder.counter("input_fetch_failures").items()):
            failures.add_metric([reason], value)
        yield failures
        yield from self._histogram(
            "job_duration_seconds",
            "Submit to end of jobs a sampler finished (completed or failed)",
            JOB_BUCKETS,
            None,
        )
        yield from self._histogram(
            "stage_duration_seconds", "Time per pipeline stage", STAGE_BUCKETS, "stage"
        )

    def _histogram(self, name: str, doc: str, buckets: Sequence[float], label: str | None) -> Iterable:
        family = HistogramMetricFamily(f"{PREFIX}_{name}", doc, labels=[label] if label else [])
        for value, (bucket_values, total) in self._recorder.histogram(name, buckets).items():
            family.add_metric([value] if label else [], bucket_values, total)
        yield family
