"""The stack's HTTP front is HAProxy wherever a binary is installed (serve/ingress_proxy.py), as in CI."""

from __future__ import annotations

import psutil
import pytest

from loadtest.stack import LocalStack
from serve.ingress_proxy import haproxy_binary


def test_the_stack_is_fronted_by_haproxy_when_one_is_installed(stack: LocalStack) -> None:
    if haproxy_binary() is None:
        pytest.skip("no HAProxy binary here: the stack runs Serve's proxy actor")
    names = set()
    for process in psutil.Process(stack.pid).children(recursive=True):
        try:
            names.add(process.name())
        except psutil.NoSuchProcess:  # a short-lived Ray child
            continue
    assert "haproxy" in names, sorted(names)
    assert "HTTP front: HAProxy" in stack.log_path.read_text(errors="replace")
