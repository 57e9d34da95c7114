"""``/readyz``: a job can start only when the store answers, jobs are admitted, and every deployment a job
needs has a running replica; ``serve.readiness.CachedCounts`` asks Serve at most once a second. ``/docs``
works offline."""

from __future__ import annotations

import re

import pytest
from api_fixtures import build_stack
from fastapi.testclient import TestClient

from serve.api.routes import create_api
from serve.readiness import CachedCounts


@pytest.fixture
def stack(redis_conn, tmp_path):
    return build_stack(redis_conn, tmp_path)


def _readyz(stack, counts):
    with TestClient(create_api(stack.api_context(lambda: counts)), raise_server_exceptions=False) as http:
        return http.get("/readyz")


def test_ready_when_every_job_deployment_has_a_running_replica(stack) -> None:
    response = _readyz(stack, {"Sampler": 2, "AudioEncoder": 1, "Ingress": 1})
    assert response.status_code == 200
    assert response.json() == {
        "ready": True,
        "job_store": "ok",
        "accepting_jobs": True,
        "deployments": {"Sampler": {"running_replicas": 2}, "AudioEncoder": {"running_replicas": 1}},
    }


@pytest.mark.parametrize("counts", [{"Sampler": 0, "AudioEncoder": 1}, {"AudioEncoder": 1}, {"Sampler": 1}])
def test_not_ready_while_a_deployment_has_no_replica(stack, counts) -> None:
    response = _readyz(stack, counts)
    assert response.status_code == 503 and response.headers["Retry-After"] == "5"
    assert response.json()["ready"] is False


def test_not_ready_while_draining(stack) -> None:
    stack.store.set_draining(30)
    response = _readyz(stack, {"Sampler": 1, "AudioEncoder": 1})
    assert response.status_code == 503
    assert response.json()["accepting_jobs"] is False


def test_the_count_is_cached_for_its_ttl() -> None:
    calls: list[int] = []

    def counts():
        calls.append(1)
        return {"Sampler": len(calls)}

    cached = CachedCounts(counts, ttl_seconds=60)
    assert cached() == cached() == {"Sampler": 1}
    assert len(calls) == 1
    assert CachedCounts(counts, ttl_seconds=0)() == {"Sampler": 2}


def test_the_docs_page_loads_swagger_ui_from_this_server(stack) -> None:
    with TestClient(stack.app()) as http:
        page = http.get("/docs").text
        assert "cdn" not in page.lower() and "https://" not in page
        scripts = re.findall(r'(?:src|href)="([^"]+)"', page)
        assets = [url for url in scripts if url.endswith((".js", ".css"))]
        assert assets and all(url.startswith("/docs/assets/") for url in assets), scripts
        for url in assets:
            response = http.get(url)
            assert response.status_code == 200 and len(response.content) > 1000, url
        assert http.get("/openapi.json").json()["openapi"].startswith("3.1")
