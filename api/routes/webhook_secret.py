"""The calling key's tenant's webhook signing secret, for its receiver to verify deliveries.

Each tenant has its own (`common.webhook_secret`): the one secret that signs another tenant's
webhooks is never shown, and a tenant's secret cannot be computed from its own.
"""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from api.deps import CallerDep, GatewayDep
from api.openapi import error_responses
from common.errors import WebhooksDisabled
from common.webhook_secret import tenant_secret

router = APIRouter(tags=["webhooks"])


class WebhookSecret(BaseModel):
    tenant: str
    #: A Standard Webhooks `whsec_...` secret: pass it to `verify_webhook` or any SW library.
    secret: str


@router.get(
    "/v1/webhook-secret",
    operation_id="get_webhook_secret",
    response_model=WebhookSecret,
    responses=error_responses(422),
)
async def webhook_secret(gw: GatewayDep, who: CallerDep) -> WebhookSecret:
    """The secret that signs the calling key's tenant's webhooks (422 `WEBHOOKS_DISABLED`
    when none is configured)."""
    settings = gw.settings
    secret = tenant_secret(settings.webhooks.secret, settings.auth.keys, who.tenant)
    if secret is None:
        raise WebhooksDisabled("webhooks are not enabled here (no signing secret configured)")
    return WebhookSecret(tenant=who.tenant, secret=secret)
