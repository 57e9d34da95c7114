"""Webhooks: deliveries recorded in the job's own transitions, signed per Standard Webhooks, retried with
backoff for their window, refused at submit for private targets (resolution stubbed, nothing connects)."""

from __future__ import annotations

import random

import anyio
import pytest
from api_fixtures import ALPHA, OkEngine, build_stack
from fastapi.testclient import TestClient
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from loadtest.webhook_receiver import Receiver
from serve.api.routes import MODEL_PATH
from serve.client import verify_webhook
from serve.config import WebhooksConfig
from serve.inputs.errors import InputRejected
from serve.inputs.fetcher import Fetcher
from serve.jobs.webhook_secrets import WebhookSecrets
from serve.webhooks import WebhookDispatcher, retry_delay, webhook_policy

LOCAL = WebhooksConfig(allow_local_http=True, first_retry_seconds=5, retry_window_seconds=60)
BODY = {
    "241_positive_prompt": "a woman is talking",
    "284_image": "Runcomfy_example_1278_1.png",
    "125_audio": "Runcomfy_example_1278_1.mp3",
}


@pytest.fixture
def stack(redis_conn, tmp_path):
    return build_stack(redis_conn, tmp_path, overrides={"webhooks": LOCAL})


@pytest.fixture
def http(stack):
    with TestClient(stack.app(), raise_server_exceptions=False) as client:
        yield client


def dispatch(stack) -> int:
    dispatcher = WebhookDispatcher(
        stack.async_store, stack.storage, stack.webhook_targets, LOCAL, rng=random.Random(0)
    )
    return anyio.run(dispatcher.run_once)


def test_chosen_events_are_delivered_signed_with_the_tenants_secret(http, stack) -> None:
    receiver = Receiver()
    try:
        body = {**BODY, "webhook": receiver.url, "webhook_events": ["started", "completed"]}
        request_id = http.post(MODEL_PATH, json=body, headers=ALPHA).json()["request_id"]
        assert stack.claim_and_run(OkEngine()).value == "completed"
        assert dispatch(stack) == 2
    finally:
        receiver.close()
    secret = http.get("/v1/webhooks/secret", headers=ALPHA).json()["secret"]
    assert secret.startswith("whsec_")
    events = [verify_webhook(secret, body, headers) for headers, body in receiver.received]
    assert sorted(event["type"] for event in events) == ["completed", "started"]
    by_type = {event["type"]: event for event in events}
    assert by_type["started"]["status"] == "in_progress" and by_type["started"]["request_id"] == request_id
    assert by_type["completed"]["output"]["video"].startswith("/v1/outputs/alpha/")
    result = http.get(f"/v1/requests/{request_id}/result", headers=ALPHA).json()["webhook"]
    assert result == {
        "url": receiver.url,
        "events": ["started", "completed"],
        "delivered": 2,
        "failed": 0,
        "attempts": 2,
    }
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + "A" * 44).verify(receiver.received[0][1], receiver.received[0][0])


def test_a_failing_receiver_gets_the_event_on_a_retry_with_the_same_id(http, stack) -> None:
    receiver = Receiver(failures=2)
    try:
        request_id = http.post(MODEL_PATH, json={**BODY, "webhook": receiver.url}, headers=ALPHA).json()[
            "request_id"
        ]
        http.post(f"/v1/requests/{request_id}/cancel", headers=ALPHA)
        assert dispatch(stack) == 1  # 503
        assert dispatch(stack) == 0  # not due yet: the first retry waits about 5 s
        stack.clock.advance(6.1)
        assert dispatch(stack) == 1  # 503 again; the second retry waits about 10 s
        stack.clock.advance(12.1)
        assert dispatch(stack) == 1  # delivered
    finally:
        receiver.close()
    ids = {headers["webhook-id"] for headers, _ in receiver.received}
    assert len(receiver.received) == 3 and len(ids) == 1
    webhook = http.get(f"/v1/requests/{request_id}/result", headers=ALPHA).json()["webhook"]
    assert (webhook["attempts"], webhook["delivered"], webhook["failed"]) == (3, 1, 0)
    assert webhook["last_error"] == "the receiver answered HTTP 503"
    metrics = http.get("/metrics").text
    assert 'infinitetalk_webhook_attempts_total{outcome="retry"} 2.0' in metrics
    assert "infinitetalk_webhook_pending 0.0" in metrics


def test_a_delivery_is_given_up_after_its_window(http, stack) -> None:
    receiver = Receiver(failures=1000)
    try:
        request_id = http.post(MODEL_PATH, json={**BODY, "webhook": receiver.url}, headers=ALPHA).json()[
            "request_id"
        ]
        http.post(f"/v1/requests/{request_id}/cancel", headers=ALPHA)
        for _ in range(8):  # attempts 50 s apart: the third one's retry would fall past the 60 s window
            dispatch(stack)
            stack.clock.advance(50)
    finally:
        receiver.close()
    webhook = http.get(f"/v1/requests/{request_id}/result", headers=ALPHA).json()["webhook"]
    assert webhook["failed"] == 1 and webhook["delivered"] == 0
    assert webhook["attempts"] == len(receiver.received) == 3


def test_rotation_signs_with_both_secrets_for_a_day(http, stack) -> None:
    old = http.get("/v1/webhooks/secret", headers=ALPHA).json()["secret"]
    rotated = http.post("/v1/webhooks/secret/rotate", headers=ALPHA).json()
    assert rotated["previous_secret"] == old and rotated["secret"] != old
    receiver = Receiver()
    try:
        request_id = http.post(MODEL_PATH, json={**BODY, "webhook": receiver.url}, headers=ALPHA).json()[
            "request_id"
        ]
        http.post(f"/v1/requests/{request_id}/cancel", headers=ALPHA)
        dispatch(stack)
    finally:
        receiver.close()
    headers, body = receiver.received[0]
    for secret in (old, rotated["secret"]):
        assert Webhook(secret).verify(body, headers)["type"] == "cancelled"


def test_a_delivery_whose_body_cannot_be_built_is_counted_and_backed_off(http, stack, monkeypatch) -> None:
    receiver = Receiver()
    try:
        body = {**BODY, "webhook": receiver.url, "webhook_events": ["completed"]}
        request_id = http.post(MODEL_PATH, json=body, headers=ALPHA).json()["request_id"]
        assert stack.claim_and_run(OkEngine()).value == "completed"

        def presign_fails(key: str, expires_in: int) -> str:
            raise RuntimeError("the object store refused to sign")

        monkeypatch.setattr(stack.storage, "url_for", presign_fails)
        assert dispatch(stack) == 1
        assert dispatch(stack) == 0  # backing off, not claimed again at once
    finally:
        receiver.close()
    monkeypatch.undo()
    webhook = http.get(f"/v1/requests/{request_id}/result", headers=ALPHA).json()["webhook"]
    assert (webhook["attempts"], webhook["delivered"], receiver.received) == (1, 0, [])
    assert webhook["last_error"] == "the delivery failed: RuntimeError: the object store refused to sign"


def test_two_rotations_at_once_both_take_effect(stack, redis_conn, monkeypatch) -> None:
    """Another replica's rotation lands between this one's read and write: it is not overwritten."""
    first = anyio.run(stack.async_store.webhook_secrets, "alpha").current
    rotated = WebhookSecrets.rotated
    others: list[WebhookSecrets] = []

    def rotated_while_another_replica_rotates(secrets: WebhookSecrets, now: float) -> WebhookSecrets:
        if not others:
            others.append(rotated(secrets, now))
            redis_conn.hset(stack.async_store.keys.webhook_secrets, "alpha", others[0].to_json())
        return rotated(secrets, now)

    monkeypatch.setattr(WebhookSecrets, "rotated", rotated_while_another_replica_rotates)
    ours = anyio.run(stack.async_store.rotate_webhook_secret, "alpha")
    assert (others[0].previous, ours.previous) == (first, others[0].current)
    assert anyio.run(stack.async_store.webhook_secrets, "alpha") == ours


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://example.com/hook", "use https://"),
        ("https://10.0.0.7/hook", "a private address"),
        ("https://169.254.169.254/latest", "a cloud metadata address"),
        ("http://10.0.0.7/hook", "http:// only to 127.0.0.0/8, ::1/128"),
        ("https://localhost/hook", "a local or internal name"),
        ("ftp://files.example.com/hook", "only https:// and http:// URLs"),
    ],
)
def test_private_and_plain_http_targets_are_refused_at_submit(http, stack, url, reason) -> None:
    response = http.post(MODEL_PATH, json={**BODY, "webhook": url}, headers=ALPHA)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_webhook" and reason in error["message"], error
    assert {d["field"] for d in error["details"]} == {"webhook"}


def test_a_name_that_resolves_to_a_private_address_is_refused_without_connecting(monkeypatch) -> None:
    def no_connect(*args: object) -> None:
        raise AssertionError("nothing may connect")

    monkeypatch.setattr("socket.socket.connect", no_connect)
    guard = Fetcher(webhook_policy(WebhooksConfig()), resolver=lambda host, port: ["10.1.2.3"])
    with pytest.raises(InputRejected, match="resolves to a private address"):
        anyio.run(lambda: guard.check("https://hooks.example.com/h", field="webhook"))
    cluster = Fetcher(webhook_policy(WebhooksConfig()))
    with pytest.raises(InputRejected, match="only https://"):
        anyio.run(lambda: cluster.check("http://127.0.0.1:9/h", field="webhook"))
    with pytest.raises(InputRejected, match="a loopback address"):
        anyio.run(lambda: cluster.check("https://[::1]/h", field="webhook"))


def test_webhook_events_need_a_webhook(http) -> None:
    response = http.post(MODEL_PATH, json={**BODY, "webhook_events": ["started"]}, headers=ALPHA)
    assert response.status_code == 422
    assert {d["field"] for d in response.json()["error"]["details"]} == {"webhook_events"}


def test_the_retry_delays_double_up_to_the_cap() -> None:
    config = LOCAL.model_copy(update={"first_retry_seconds": 5.0, "max_retry_interval_seconds": 600.0})
    rng = random.Random(1)
    delays = [retry_delay(attempt, config, rng) for attempt in range(1, 12)]
    assert 4.0 <= delays[0] <= 6.0  # the first retry within about 10 s of the event
    assert all(0.8 * min(5 * 2**i, 600) <= d <= 1.2 * min(5 * 2**i, 600) for i, d in enumerate(delays))
    assert max(delays) <= 720


def test_a_delivery_that_raises_is_counted_and_retried_and_spares_the_rest_of_its_batch(
    http, stack, monkeypatch
) -> None:
    receiver = Receiver()
    post = stack.webhook_targets.post

    async def broken_for_one_target(url, *args, **kwargs):
        if url.endswith("/broken"):
            raise RuntimeError("TLS context could not be built")
        return await post(url, *args, **kwargs)

    monkeypatch.setattr(stack.webhook_targets, "post", broken_for_one_target)
    try:
        jobs = [
            http.post(MODEL_PATH, json={**BODY, "webhook": receiver.url + suffix}, headers=ALPHA).json()[
                "request_id"
            ]
            for suffix in ("/broken", "/fine")
        ]
        for request_id in jobs:
            http.post(f"/v1/requests/{request_id}/cancel", headers=ALPHA)
        assert dispatch(stack) == 2
        assert dispatch(stack) == 0  # the failed one waits for its retry, like any failed attempt
    finally:
        receiver.close()
    broken, fine = (http.get(f"/v1/requests/{i}/result", headers=ALPHA).json()["webhook"] for i in jobs)
    assert (fine["delivered"], len(receiver.received)) == (1, 1)
    assert (broken["attempts"], broken["delivered"], broken["failed"]) == (1, 0, 0)
    assert broken["last_error"] == "the delivery failed: RuntimeError: TLS context could not be built"
