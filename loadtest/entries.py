"""Names shared by the locustfile and the runner, in a module that does not import Locust.

Importing ``locust`` monkey-patches the whole process for gevent, which the runner and the tests must not
be; so they read the names of Locust's statistics entries from here.
"""

from __future__ import annotations

import re

from loadtest.client import MODE_PATHS, MODEL_PATH

SUBMIT_NAME = MODEL_PATH
#: Each job mode's submit entry (its path); the seed endpoint's is ``SUBMIT_NAME``.
SUBMIT_NAMES = MODE_PATHS
STATUS_NAME = "/v1/requests/[id]/status"
RESULT_NAME = "/v1/requests/[id]/result"
CANCEL_NAME = "/v1/requests/[id]/cancel"
DOWNLOAD_NAME = "/v1/outputs/[key]"
HEALTH_NAME = "/healthz"
UNKNOWN_NAME = "/v1/requests/[unknown id]/status"
JOB_TYPE = "JOB"
JOB_NAME = "job end-to-end"
# --mix: weights of job users and status pollers.
MIXES = {"status-heavy": (1, 4), "balanced": (1, 1), "jobs": (1, 0)}


def job_user_count(mix: str, users: int) -> int:
    """How many of ``users`` run jobs under ``mix``: its share, rounded, and at least one. (Locust's own
    split by weight rounds 2 users at 1:4 down to no job user, and a run that submits no job loses none.)"""
    job_weight, poller_weight = MIXES[mix]
    return max(1, round(users * job_weight / (job_weight + poller_weight)))


_TIMESPAN = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def parse_timespan(text: str) -> int:
    """Seconds of a time span as Locust's ``--run-time`` reads it (``90``, ``45s``, ``2m``, ``1h30m``)."""
    text = text.strip()
    if text.isdigit():
        return int(text)
    match = _TIMESPAN.match(text)
    if not text or match is None:
        raise ValueError(f"not a time span: {text!r} (e.g. 45s, 2m, 1h30m)")
    hours, minutes, seconds = (int(part or 0) for part in match.groups())
    return hours * 3600 + minutes * 60 + seconds
