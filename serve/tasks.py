"""The job transport: Ray Serve's task consumer (Celery over the same Redis), carrying only request ids.

Settings learned by experiment on Ray 2.60 (docs/architecture.md, "Queue"): one job per replica and no
prefetch (a prefetched message would sit invisible to the autoscaler), no Celery retries (the job store
decides retries), and a visibility timeout far above any job, because Celery re-runs a message whose job
outlives it; recovery from a dead sampler comes from our lease reaper, not from Celery's redelivery.
"""

from __future__ import annotations

from ray.serve.schema import CeleryAdapterConfig, TaskProcessorConfig
from ray.serve.task_consumer import instantiate_adapter_from_config

QUEUE_NAME = "infinitetalk-jobs"
TASK_NAME = "run_job"
_VISIBILITY_TIMEOUT_SECONDS = 12 * 3600
_RESULT_EXPIRES_SECONDS = 3600


def task_processor_config(redis_url: str) -> TaskProcessorConfig:
    return TaskProcessorConfig(
        queue_name=QUEUE_NAME,
        max_retries=0,
        failed_task_queue_name=f"{QUEUE_NAME}-dlq",
        unprocessable_task_queue_name=f"{QUEUE_NAME}-unprocessable",
        adapter_config=CeleryAdapterConfig(
            broker_url=redis_url,
            backend_url=redis_url,
            broker_transport_options={"visibility_timeout": _VISIBILITY_TIMEOUT_SECONDS},
            app_custom_config={"worker_prefetch_multiplier": 1, "result_expires": _RESULT_EXPIRES_SECONDS},
        ),
    )


class TaskPublisher:
    """Enqueues ``run_job(request_id)``; a producer only (no worker runs in the ingress)."""

    def __init__(self, redis_url: str) -> None:
        self._adapter = instantiate_adapter_from_config(task_processor_config(redis_url))

    def __call__(self, request_id: str) -> None:
        self._adapter.enqueue_task_sync(TASK_NAME, kwargs={"request_id": request_id})
