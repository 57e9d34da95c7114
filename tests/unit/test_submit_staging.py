"""What a submit does with the inputs it staged when the job's creation does not simply succeed: a refusal
deletes them, a reply lost keeps them (the job may exist and need them), a concurrent submit that won the
idempotency key leaves the loser's to be deleted."""

from __future__ import annotations

import asyncio

import pytest
import redis
from api_fixtures import SEED_BODY, OkEngine, build_stack

from serve.api.schemas import SubmitRequest
from serve.jobs.errors import QueueFull
from serve.jobs.records import JobStatus
from serve.maintenance import Maintenance

REQUEST = SubmitRequest.model_validate(SEED_BODY)


@pytest.fixture
def stack(redis_conn, tmp_path):
    return build_stack(redis_conn, tmp_path)


def job_ids(stack) -> list[str]:
    prefix = stack.store.keys.job("")
    return [key.decode()[len(prefix) :] for key in stack.redis.keys(prefix + "*")]


def test_a_created_job_whose_reply_was_lost_keeps_its_inputs_and_runs(stack, monkeypatch) -> None:
    create = stack.async_store.create

    async def create_then_lose_the_reply(*args, **kwargs):
        await create(*args, **kwargs)
        raise redis.ConnectionError("Connection reset by peer")

    monkeypatch.setattr(stack.async_store, "create", create_then_lose_the_reply)
    with pytest.raises(redis.ConnectionError):
        asyncio.run(stack.jobs.submit("alpha", REQUEST, "key-1"))
    (request_id,) = job_ids(stack)
    staged = stack.store.get(request_id).inputs
    assert stack.objects("inputs") == sorted(staged[role].key for role in staged)

    # The client retries with its key and is answered with that job, which runs.
    monkeypatch.setattr(stack.async_store, "create", create)
    accepted, created = asyncio.run(stack.jobs.submit("alpha", REQUEST, "key-1"))
    assert (accepted.request_id, created) == (request_id, False)
    assert stack.claim_and_run(OkEngine()) is JobStatus.COMPLETED


def test_a_submit_cancelled_while_creating_keeps_the_inputs_of_the_job_it_created(stack, monkeypatch) -> None:
    create = stack.async_store.create

    async def create_then_hang(*args, **kwargs):
        await create(*args, **kwargs)
        await asyncio.sleep(60)  # the reply never comes; the client disconnects

    async def submit_and_disconnect() -> None:
        task = asyncio.create_task(stack.jobs.submit("alpha", REQUEST, None))
        while not job_ids(stack):
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    monkeypatch.setattr(stack.async_store, "create", create_then_hang)
    asyncio.run(submit_and_disconnect())
    (request_id,) = job_ids(stack)
    assert len(stack.objects("inputs")) == len(stack.store.get(request_id).inputs) == 2


def test_a_refused_creation_deletes_what_the_submit_staged(stack, monkeypatch) -> None:
    async def refuse(*args, **kwargs):
        raise QueueFull("the queue already holds 50 jobs")

    monkeypatch.setattr(stack.async_store, "create", refuse)
    with pytest.raises(QueueFull):
        asyncio.run(stack.jobs.submit("alpha", REQUEST, None))
    assert stack.objects("inputs") == []


def test_the_submit_that_lost_its_idempotency_key_to_a_concurrent_one_deletes_its_inputs(
    stack, monkeypatch
) -> None:
    async def not_seen_yet(*args, **kwargs):
        return None  # both submits passed this check before either created its job

    monkeypatch.setattr(stack.async_store, "lookup_idempotent", not_seen_yet)

    async def two_at_once():
        return await asyncio.gather(*(stack.jobs.submit("alpha", REQUEST, "same-key") for _ in range(2)))

    answers = asyncio.run(two_at_once())
    assert {record.request_id for record, _ in answers} == set(job_ids(stack))
    (request_id,) = job_ids(stack)
    assert sorted(created for _, created in answers) == [False, True]
    staged = stack.store.get(request_id).inputs
    assert stack.objects("inputs") == sorted(staged[role].key for role in staged)


def test_the_storage_sweep_judges_staged_inputs_by_this_hosts_clock(stack) -> None:
    """The store's clock is Redis's; the files' times are this host's. With Redis's clock a retention
    ahead of the host's, a sweep by the store's clock deleted the inputs of a job still queued."""
    request_id = stack.enqueue()
    policy = stack.store.policy
    stack.clock.advance(policy.retention_seconds + policy.lease_seconds + 10)
    Maintenance(stack.store, stack.storage, stack.authenticator).run_once()
    staged = stack.store.get(request_id).inputs
    assert stack.objects("inputs") == sorted(staged[role].key for role in staged)
