"""The tenant's webhook secret: read it (made on first use) and rotate it (``serve.webhooks``)."""

from __future__ import annotations

from fastapi import FastAPI

from serve.api.common import ApiContext, utc
from serve.api.errors import error_responses
from serve.api.schemas import WebhookSecretResponse
from serve.api.security import Tenant
from serve.jobs.webhook_secrets import ROTATION_GRACE_SECONDS, WebhookSecrets


def add_webhook_routes(api: FastAPI, context: ApiContext) -> None:
    def secret_body(secrets: WebhookSecrets) -> WebhookSecretResponse:
        in_grace = secrets.previous in secrets.signing(context.store.now())
        return WebhookSecretResponse(
            secret=secrets.current,
            previous_secret=secrets.previous if in_grace else None,
            previous_valid_until=utc(secrets.rotated_at + ROTATION_GRACE_SECONDS)
            if in_grace and secrets.rotated_at is not None
            else None,
        )

    @api.get(
        "/v1/webhooks/secret",
        response_model=WebhookSecretResponse,
        response_model_exclude_none=True,
        responses=error_responses(401),
        summary="Extension: the secret this tenant's webhook deliveries are signed with",
    )
    async def webhook_secret(tenant: Tenant) -> WebhookSecretResponse:
        return secret_body(await context.store.webhook_secrets(tenant))

    @api.post(
        "/v1/webhooks/secret/rotate",
        response_model=WebhookSecretResponse,
        response_model_exclude_none=True,
        responses=error_responses(401),
        summary="Extension: a new webhook secret; the old one also signs for a day",
    )
    async def rotate_webhook_secret(tenant: Tenant) -> WebhookSecretResponse:
        return secret_body(await context.store.rotate_webhook_secret(tenant))
