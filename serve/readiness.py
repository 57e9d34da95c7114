"""Readiness: whether a job can start now, and which deployments have a replica ready to run their part.

A Serve replica is RUNNING once its constructor has returned: for the Sampler that is after the weights
are loaded, the warm-up passes ran and the job loop started; for the AudioEncoder after wav2vec2 is loaded.
Serve's controller knows those states (``serve.status()``), so readiness asks it, rather than replicas
announcing themselves somewhere else. The answer is cached for a second: a burst of probes costs one
controller call.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping

#: The deployments a job needs besides the ingress answering: it cannot start until each has a replica.
JOB_DEPLOYMENTS = ("Sampler", "AudioEncoder")

#: Running replicas per deployment of this application.
ReplicaCounts = Callable[[], Mapping[str, int]]


def serve_replica_counts(app_name: str) -> dict[str, int]:
    """RUNNING replicas per deployment of ``app_name``, from Serve's controller (a blocking call)."""
    from ray import serve
    from ray.serve._private.common import ReplicaState

    application = serve.status().applications.get(app_name)
    if application is None:
        return {}
    return {
        name: deployment.replica_states.get(ReplicaState.RUNNING, 0)
        for name, deployment in application.deployments.items()
    }


class CachedCounts:
    """``counts()`` at most once per ``ttl_seconds``; callers in between get the last answer."""

    def __init__(self, counts: ReplicaCounts, ttl_seconds: float = 1.0) -> None:
        self._counts = counts
        self._ttl = ttl_seconds
        self._lock = threading.Lock()
        self._value: Mapping[str, int] = {}
        self._at = float("-inf")

    def __call__(self) -> Mapping[str, int]:
        with self._lock:
            if time.monotonic() - self._at >= self._ttl:
                self._value = dict(self._counts())
                self._at = time.monotonic()
            return self._value
