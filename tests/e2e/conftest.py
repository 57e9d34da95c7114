"""End-to-end tests: HTTP against the whole local stack, started the way a user starts it.

One stack per session, ``python -m serve up --config <generated>``: its own Ray, an embedded Redis outside
Ray, the tiny model on CPU. The config is ``configs/local.yaml`` as ``loadtest.stack.battery_settings``
changes it: the stack's own ports (HTTP from 8300, Redis from 6420: never the developer's 8000/6399, nor
the integration
tests' stack), its own scratch directory, a 15 s lease and a 2 s maintenance period (a killed sampler's job
comes back within seconds), a queue bound of 5 and small input caps (2 MiB images, 4 MiB audio and video).

Modules run in a fixed order: the hostile inputs, the other job modes, schemathesis, the Locust smoke run,
and the fault scenarios last, because they kill replicas and restart Redis. Tests that need the sampler
take the ``idle_stack`` fixture, which waits until the stack is healthy and no job is queued or running, so
a job left by an earlier test does not eat their time budget.

``INFINITETALK_E2E_ATTACH=<workdir>`` reuses a stack started earlier with ``loadtest.stack`` in that
directory (handy while writing tests); it is left running at the end.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from loadtest.client import ApiClient
from loadtest.faults import FaultTarget
from loadtest.stack import OTHER_TOKEN, TOKEN, LocalStack, StackError, StackSettings, battery_settings

STARTUP_TIMEOUT_S = 300.0
IDLE_TIMEOUT_S = 240.0
MODULE_ORDER = (
    "test_hostile_inputs",
    "test_modes",
    "test_python_client",
    "test_webhook_delivery",
    "test_schemathesis",
    "test_locust_smoke",
    "test_faults",
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: HTTP against the whole local stack (tests/e2e, minutes)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Put this directory's tests in MODULE_ORDER, in the slots they hold; other tests stay where they are."""
    here = Path(__file__).resolve().parent

    def module(item: pytest.Item) -> str:
        return item.path.stem if item.path.resolve().parent == here else ""

    slots = [index for index, item in enumerate(items) if module(item) in MODULE_ORDER]
    ordered = sorted((items[index] for index in slots), key=lambda item: MODULE_ORDER.index(module(item)))
    for index, item in zip(slots, ordered, strict=True):
        items[index] = item


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    attach = os.environ.get("INFINITETALK_E2E_ATTACH")
    if attach:
        yield LocalStack.attach(StackSettings.from_workdir(Path(attach)))
        return
    local = LocalStack(battery_settings(tmp_path_factory.mktemp("e2e-stack")))
    try:
        local.start(timeout=STARTUP_TIMEOUT_S)
    except StackError as error:
        pytest.fail(f"the e2e stack did not start: {error}")
    try:
        yield local
    finally:
        local.stop()


@pytest.fixture()
def idle_stack(stack: LocalStack) -> LocalStack:
    try:
        stack.wait_idle(IDLE_TIMEOUT_S)
    except StackError as error:
        pytest.fail(str(error))
    return stack


@pytest.fixture(scope="session")
def api(stack: LocalStack) -> Iterator[ApiClient]:
    with ApiClient(stack.base_url, TOKEN) as client:
        yield client


@pytest.fixture(scope="session")
def other_api(stack: LocalStack) -> Iterator[ApiClient]:
    with ApiClient(stack.base_url, OTHER_TOKEN) as client:
        yield client


@pytest.fixture(scope="session")
def fault_target(stack: LocalStack) -> FaultTarget:
    settings = stack.settings
    return FaultTarget(
        base_url=stack.base_url,
        token=TOKEN,
        redis_dir=settings.redis_dir,
        redis_port=settings.redis_port,
        storage_root=settings.storage_dir,
        max_queued=settings.max_queued,
        root_pid=stack.pid,
    )
