"""One clock for every replica: Redis's.

A lease is written by the sampler that holds it and checked by whichever ingress replica's reaper looks
next; run deadlines, webhook retry times and result expiries likewise. Compared across hosts, two clocks
that disagree by more than a fraction of a lease would let a reaper take a job from a worker still beating
(or fail a run ``time_limit`` early). So the job store tells time by Redis's ``TIME``: this host's clock plus
the offset measured against it, refreshed every ``refresh_seconds``. Between refreshes, and while Redis is
unreachable, the last offset holds; before the first measurement, the offset is zero (this host's clock).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import redis

logger = logging.getLogger(__name__)

REFRESH_SECONDS = 60.0
# The TIME read waits at most this long for an answer (name resolution aside) when Redis is away: it runs
# on its caller, possibly an event loop, once a refresh period.
TIMEOUT_SECONDS = 0.5


class RedisClock:
    def __init__(
        self,
        client: redis.Redis,
        *,
        refresh_seconds: float = REFRESH_SECONDS,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._refresh = refresh_seconds
        self._wall = wall
        self._offset = 0.0
        self._next_measure = 0.0
        self._lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str) -> RedisClock:
        return cls(
            redis.Redis.from_url(url, socket_timeout=TIMEOUT_SECONDS, socket_connect_timeout=TIMEOUT_SECONDS)
        )

    @property
    def offset(self) -> float:
        """Seconds to add to this host's clock to read Redis's."""
        return self._offset

    def __call__(self) -> float:
        if time.monotonic() >= self._next_measure:
            self._measure()
        return self._wall() + self._offset

    def _measure(self) -> None:
        with self._lock:
            if time.monotonic() < self._next_measure:
                return  # another thread just did
            self._next_measure = time.monotonic() + self._refresh  # a failed read, too, waits a period
            try:
                sent = self._wall()
                seconds, microseconds = self._client.time()
                received = self._wall()
            except redis.RedisError as error:
                logger.warning(
                    "Redis's clock unreadable (%s); keeping the offset %.3f s", error, self._offset
                )
                return
            # Redis read its clock about halfway through the round trip.
            self._offset = seconds + microseconds / 1e6 - (sent + received) / 2
