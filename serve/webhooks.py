"""Webhook deliveries: durable, signed per Standard Webhooks, retried with backoff, never in a job's way.

A job's state change that is one of the events its request chose becomes a delivery inside the job store's
own transition (``lib.lua``: ``changed``), so no acknowledged change can lose its event, whatever replica
dies next. Dispatchers (a loop in every ingress replica) claim due deliveries with a lease and POST them:

* the body is the job as that event left it: the ``/status`` JSON (``/result`` for the terminal events,
  with a download link) plus ``"type"``; ``webhook-id`` is the same for every attempt of one event
  (receivers deduplicate on it), ``webhook-timestamp`` is the attempt's time, and ``webhook-signature``
  carries ``v1,<base64 HMAC-SHA256 of "id.timestamp.body">`` for the tenant's secret (two of them for a day
  after a rotation);
* a 2xx answer delivers it; anything else (an error status, a refused or unreachable target, a timeout) is
  retried: the first retry within about ``first_retry_seconds``, then twice as long each time, jittered by
  ±20 %, at most ``max_retry_interval_seconds`` apart, until ``retry_window_seconds`` after the event; then
  it is given up. Each attempt is counted on the job (its result's ``webhook``) and in ``/metrics``.

Targets pass the input fetcher's address guard at submit and again at every attempt (DNS may change): https
only and public addresses, except that ``webhooks.allow_local_http`` (configs/local.yaml only) admits
``http://127.0.0.1`` so a developer can receive webhooks on their own machine.
"""

from __future__ import annotations

import json
import logging
import random
import threading
from datetime import UTC, datetime

import anyio
import redis
from standardwebhooks.webhooks import Webhook

from serve.api.schemas import ResultResponse, StatusResponse
from serve.config import WebhooksConfig
from serve.inputs.errors import InputRejected
from serve.inputs.fetcher import Fetcher, FetchPolicy
from serve.jobs.async_store import AsyncJobStore
from serve.jobs.operations import Delivery
from serve.jobs.records import JobRecord
from serve.storage import ObjectStore

logger = logging.getLogger(__name__)

LOOPBACK_NETWORKS = ("127.0.0.0/8", "::1/128")
BATCH = 20


def webhook_policy(config: WebhooksConfig) -> FetchPolicy:
    """The address policy of webhook targets: the input fetcher's, with no redirects followed."""
    return FetchPolicy(
        timeout_seconds=config.timeout_seconds,
        connect_timeout_seconds=min(config.timeout_seconds, 10.0),
        max_redirects=0,
        http_networks=LOOPBACK_NETWORKS if config.allow_local_http else (),
        user_agent="infinitetalk-serve webhooks",
    )


def retry_delay(attempts: int, config: WebhooksConfig, rng: random.Random) -> float:
    """Seconds until the next attempt after ``attempts`` failed ones: doubling from the first retry's
    delay, capped, jittered ±20 % so receivers coming back are not hit by every retry at once."""
    base = min(config.first_retry_seconds * 2 ** max(attempts - 1, 0), config.max_retry_interval_seconds)
    return base * rng.uniform(0.8, 1.2)


def signature_headers(secrets: list[str], webhook_id: str, sent_at: datetime, body: bytes) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt, signed with every secret given."""
    signatures = " ".join(Webhook(secret).sign(webhook_id, sent_at, body) for secret in secrets)
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(sent_at.timestamp())),
        "webhook-signature": signatures,
        "Content-Type": "application/json",
    }


def event_body(kind: str, record: JobRecord, video_url: str | None) -> bytes:
    """What the event says: the job as it left it, as ``/status`` (``/result`` when it is over) shows it."""
    if record.is_terminal:
        shown = ResultResponse.from_record(record, video_url=video_url)
    else:
        shown = StatusResponse.from_record(record)
    return json.dumps({"type": kind, **shown.model_dump(mode="json", exclude_none=True)}).encode()


class WebhookDispatcher:
    """Claims due deliveries and sends them; ``run`` loops until ``stop`` is set."""

    def __init__(
        self,
        store: AsyncJobStore,
        storage: ObjectStore,
        targets: Fetcher,
        config: WebhooksConfig,
        *,
        public_base_url: str | None = None,
        url_ttl_seconds: int = 3600,
        rng: random.Random | None = None,
    ) -> None:
        self._store = store
        self._storage = storage
        self._targets = targets
        self._config = config
        self._base = (public_base_url or "").rstrip("/")
        self._url_ttl = url_ttl_seconds
        self._rng = rng or random.Random()

    def run_in_thread(self, stop: threading.Event) -> threading.Thread:
        thread = threading.Thread(target=anyio.run, args=(self.run, stop), name="webhooks", daemon=True)
        thread.start()
        return thread

    async def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                sent = await self.run_once()
            except Exception:  # Redis away: the deliveries wait in it; try again next period
                logger.exception("webhook dispatch failed")
                sent = 0
            if not sent:
                await anyio.sleep(self._config.poll_seconds)

    async def run_once(self) -> int:
        """Attempt every due delivery (up to a batch) at once; how many were attempted."""
        lease = self._config.timeout_seconds * 2 + 5
        deliveries = await self._store.claim_deliveries(lease, BATCH)
        async with anyio.create_task_group() as group:
            for delivery in deliveries:
                group.start_soon(self._attempt_alone, delivery)
        return len(deliveries)

    async def _attempt_alone(self, delivery: Delivery) -> None:
        """One attempt, whose failure cannot cancel the rest of its batch."""
        try:
            await self._attempt(delivery)
        except Exception:  # Redis away mid-attempt: unrecorded, it is claimed again when its lease ends
            logger.exception("webhook %s: the attempt was not recorded", delivery.webhook_id)

    async def _attempt(self, delivery: Delivery) -> None:
        record = await self._store.job_at_event(delivery.request_id, delivery.event_id)
        if record is None or record.webhook is None:
            await self._store.delivery_done(delivery, "gave_up", error="the job was deleted")
            return
        try:
            secrets = (await self._store.webhook_secrets(delivery.tenant)).signing(self._store.now())
            body = event_body(delivery.type, record, self._video_url(record))
            headers = signature_headers(secrets, delivery.webhook_id, datetime.now(UTC), body)
            status = await self._targets.post(record.webhook, body, headers, field="webhook")
            error = "" if 200 <= status < 300 else f"the receiver answered HTTP {status}"
        except InputRejected as refused:
            error = refused.reason
        except redis.RedisError:
            raise  # the store is away: nothing can be recorded; the delivery is claimed again after its lease
        except Exception as failure:
            # Not a refusal the guard names: counted like one, so the delivery backs off and is given up
            # after its window instead of being claimed again every lease.
            logger.exception("webhook %s: the delivery failed", delivery.webhook_id)
            error = f"the delivery failed: {type(failure).__name__}: {failure}"
        if not error:
            await self._store.delivery_done(delivery, "delivered")
            return
        now = self._store.now()
        next_at = now + retry_delay(delivery.attempts, self._config, self._rng)
        if next_at - delivery.created_at > self._config.retry_window_seconds:
            logger.warning(
                "webhook %s given up after %d attempts: %s", delivery.webhook_id, delivery.attempts, error
            )
            await self._store.delivery_done(delivery, "gave_up", error=error)
        else:
            await self._store.delivery_done(delivery, "retry", next_at, error)

    def _video_url(self, record: JobRecord) -> str | None:
        if record.output_key is None:
            return None
        url = self._storage.url_for(record.output_key, self._url_ttl)
        return url if url.startswith(("https://", "http://")) else self._base + url
