"""Webhooks on the whole local stack: every chosen event reaches a receiver on 127.0.0.1, signed so that a
Standard Webhooks library verifies it with the tenant's published secret; a receiver that fails its first
attempts still gets each event (same ``webhook-id`` on every attempt); a private target is refused at submit;
and a receiver that is down across a restart of the whole stack gets the event after it.

The stack retries a second after a failure, then at most 4 s apart (``loadtest.stack.battery_settings``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest
from standardwebhooks.webhooks import Webhook

from loadtest.client import ApiClient, job_body
from loadtest.stack import free_port
from loadtest.webhook_receiver import Receiver
from serve.api.schemas import WebhookDeliveries
from serve.client import verify_webhook

pytestmark = pytest.mark.e2e

JOB_TIMEOUT_S = 300
DELIVERY_TIMEOUT_S = 60


def _until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f} s: {what}")
        time.sleep(0.5)


def _deliveries(api: ApiClient, request_id: str) -> WebhookDeliveries:
    webhook = api.result(request_id).webhook
    assert webhook is not None, f"the result of {request_id} shows no webhook deliveries"
    return webhook


def _secret(api: ApiClient) -> str:
    response = api.http.get("/v1/webhooks/secret")
    assert response.status_code == 200, response.text
    return response.json()["secret"]


def test_every_chosen_event_arrives_signed_even_through_failures(idle_stack, api: ApiClient) -> None:
    receiver = Receiver(failures=2)
    try:
        body = {**job_body(), "webhook": receiver.url, "webhook_events": ["started", "progress", "completed"]}
        request_id = api.submit_accepted(body)
        assert (
            api.wait_until(request_id, {"completed", "failed"}, timeout=JOB_TIMEOUT_S).status == "completed"
        )

        def all_delivered() -> bool:
            webhook = _deliveries(api, request_id)
            types = {json.loads(body)["type"] for _, body in receiver.received}
            return "completed" in types and webhook.delivered + webhook.failed == len(
                {headers["webhook-id"] for headers, _ in receiver.received}
            )

        _until(all_delivered, DELIVERY_TIMEOUT_S, "every event delivered")
    finally:
        receiver.close()
    secret = _secret(api)
    verified = [
        (headers["webhook-id"], Webhook(secret).verify(body, headers)) for headers, body in receiver.received
    ]
    types = [event["type"] for _, event in verified]
    assert {"started", "progress", "completed"} <= set(types), types
    assert all(event["request_id"] == request_id for _, event in verified)
    # The two refused attempts were retried with their own webhook-id: 2 more requests than events.
    assert len(verified) == len({webhook_id for webhook_id, _ in verified}) + 2
    completed = next(event for _, event in verified if event["type"] == "completed")
    assert completed["status"] == "completed" and completed["output"]["video"]
    assert _deliveries(api, request_id).failed == 0


@pytest.mark.parametrize(
    "url", ["https://10.0.0.1/hooks", "https://169.254.169.254/latest", "http://192.168.1.1/hooks"]
)
def test_a_private_webhook_target_is_refused_at_submit(api: ApiClient, url: str) -> None:
    response = api.post_job({**job_body(), "webhook": url})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_webhook"


def test_a_receiver_down_across_a_stack_restart_gets_the_event_after(idle_stack, api: ApiClient) -> None:
    if not idle_stack._owned:
        pytest.skip("an attached stack is not restarted")
    port = free_port(18600)
    url = f"http://127.0.0.1:{port}/hooks"
    request_id = api.submit_accepted({**job_body(), "webhook": url})
    assert api.wait_until(request_id, {"completed", "failed"}, timeout=JOB_TIMEOUT_S).status == "completed"
    _until(lambda: _deliveries(api, request_id).attempts >= 1, 30, "a refused attempt")
    assert _deliveries(api, request_id).delivered == 0

    idle_stack.stop()
    idle_stack.start()
    receiver = Receiver(port=port)
    try:
        _until(lambda: receiver.received, DELIVERY_TIMEOUT_S, "the event after the restart")
    finally:
        receiver.close()
    headers, body = receiver.received[0]
    assert verify_webhook(_secret(api), body, headers)["type"] == "completed"  # the client's helper
    _until(lambda: _deliveries(api, request_id).delivered == 1, 30, "the delivery recorded")
