"""Integration tests: the whole application on a real local Ray cluster, a real Redis and the tiny model.

One stack for this package, shared by every test here (so Ray tests never run in parallel) and torn down
after its last test, before any other suite starts its own:

* an ``EmbeddedRedis`` in a temporary directory on a free port, started here, before ``ray.init`` and
  outside Ray, as ``python -m serve up`` does (a process started inside a Ray worker dies with that worker),
  and its URL in ``INFINITETALK_REDIS_URL`` for every Ray process, as ``serve up`` sets it;
* a local Ray cluster with 4 CPUs and one fake GPU (``num_gpus=1`` only makes Ray count a GPU; the tiny
  preset runs on CPU), so two Sampler replicas at ``num_gpus: 0.5`` share it as on a real GPU node;
* Serve's HTTP proxy on 127.0.0.1 at a free port, and the application of ``configs/local.yaml`` with its
  args and per-deployment options changed for the test (storage and tokens in the temporary directory: three
  tenants, one with a queued cap of its own; a 6 s lease and a 1 s maintenance period so a dead sampler's
  job is retried within seconds, a 90 s maximum run time that only a hung job reaches, a health-check
  timeout longer than the fault tests' SIGSTOP pauses, two Sampler replicas at ``num_gpus: 0.5`` under the
  autoscaling policy that ``configs/gpu.yaml`` names).

The app is deployed as a config, the way ``serve run configs/local.yaml`` deploys it: the Serve controller
imports ``serve.app:build_app`` with the args and then applies the config's ``deployments:`` overrides,
which decide replicas, GPU fractions and the autoscaling policy in production too. ``serve.run`` of an
``Application`` would skip those overrides. Ray 2.60 has no public Python call that deploys a config, so
this uses the client that the ``serve`` CLI uses (``ray.serve.context._get_global_client``), also for the
replica details (pids) that ``serve status`` shows; ``ray.util.state`` needs the dashboard, which is off.

Tests that kill replicas leave it to Serve to start new ones; the ``stack`` fixture waits for every
deployment to be healthy again before the next test starts. Each poll loop has its own deadline, well under
the pytest timeout, so a stuck job fails its test with the job's history rather than hanging the run.
Run with ``python -m pytest tests/integration -q -s`` (``-s`` shows the fault timelines); about 3 minutes on
2 idle cores (longer when they are busy), a sixth of it starting the stack.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
import yaml

from serve.config import AppConfig
from serve.jobs.embedded_redis import EmbeddedRedis
from serve.jobs.store import JobStore

from .integration_stack import (
    APP_NAME,
    DEPLOY_TIMEOUT_S,
    TOKEN,
    Stack,
    app_document,
    app_state,
    free_port,
    tokens_document,
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "integration: needs a local Ray cluster and Redis (tests/integration, minutes)"
    )


@pytest.fixture(scope="package")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="package")
def ray_cluster(redis_server: EmbeddedRedis) -> Iterator[None]:
    import ray

    with pytest.MonkeyPatch.context() as env:
        # As `python -m serve up` does: Ray's processes (the controller running the autoscaling policy, the
        # replicas) inherit the embedded Redis URL from this process's environment.
        env.setenv("INFINITETALK_REDIS_URL", redis_server.url)
        env.setenv("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(num_cpus=4, num_gpus=1, include_dashboard=False)
        try:
            yield
        finally:
            ray.shutdown()


@pytest.fixture(scope="package")
def _deployed(
    ray_cluster: None, redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    from ray import serve
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    tmp = tmp_path_factory.mktemp("app")
    tokens_file = tmp / "tokens.yaml"
    tokens_file.write_text(yaml.safe_dump(tokens_document()))
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="HeadOnly")
    app = app_document(redis_server.url, tmp, tokens_file)
    _get_global_client().deploy_apps(ServeDeploySchema.model_validate({"applications": [app]}))
    base_url = f"http://127.0.0.1:{port}"
    http = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30.0)
    config = AppConfig.model_validate(app["args"])
    client = redis_server.client()
    store = JobStore(client, namespace=config.redis.namespace, policy=config.queue.policy())
    stack = Stack(base_url=base_url, http=http, store=store, redis=client, storage_root=tmp / "storage")
    try:
        deadline = time.monotonic() + DEPLOY_TIMEOUT_S
        while (state := app_state()) != "RUNNING":
            if state == "DEPLOY_FAILED" or time.monotonic() > deadline:
                message = serve.status().applications[APP_NAME].message if state != "absent" else ""
                pytest.fail(f"the app did not deploy ({state}): {message}")
            time.sleep(1.0)
        stack.wait_healthy(DEPLOY_TIMEOUT_S)
        yield stack
    finally:
        http.close()
        serve.shutdown()


@pytest.fixture()
def stack(_deployed: Stack) -> Stack:
    """The shared app, healthy: a replica killed by an earlier test has been replaced."""
    _deployed.wait_healthy()
    return _deployed
