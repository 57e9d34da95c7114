"""The status path's asynchronous reads agree with the store's, on any event loop."""

from __future__ import annotations

import asyncio

import pytest

from serve.jobs import EmbeddedRedis, JobRecord, JobStore
from serve.jobs.reader import JobReader


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with EmbeddedRedis(tmp_path_factory.mktemp("redis")) as embedded:
        yield embedded


@pytest.fixture()
def store(server) -> JobStore:
    client = server.client()
    client.flushdb()
    return JobStore(client, namespace="reader-test")


def test_reads_match_the_store_on_successive_event_loops(server, store) -> None:
    reader = JobReader.from_url(store, server.url, timeout_seconds=2.0)
    for rid in ("a" * 32, "b" * 32):
        store.create(JobRecord(request_id=rid, tenant="acme", params={}, inputs={}))

    async def read(request_id: str, tenant: str):
        return (
            await reader.get(request_id, tenant),
            await reader.is_gone(request_id, tenant),
            await reader.queue_position(request_id),
        )

    # A second asyncio.run is a new loop: the reader must not reuse the first loop's connection.
    for _ in range(2):
        record, gone, position = asyncio.run(read("b" * 32, "acme"))
        assert record == store.get("b" * 32) and not gone and position == 1
    assert asyncio.run(read("b" * 32, "other-tenant"))[0] is None
    assert asyncio.run(read("c" * 32, "acme")) == (None, False, None)


def test_a_deleted_job_reads_as_gone_for_its_tenant_only(server, store) -> None:
    reader = JobReader.from_url(store, server.url, timeout_seconds=2.0)
    store.create(JobRecord(request_id="d" * 32, tenant="acme", params={}, inputs={}))
    store.cancel("d" * 32, "acme")
    assert store.delete("d" * 32)
    assert asyncio.run(reader.is_gone("d" * 32, "acme"))
    assert not asyncio.run(reader.is_gone("d" * 32, "other-tenant"))
