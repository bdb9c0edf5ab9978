"""Each tenant's webhook signing secret.

Signing every tenant's webhooks with the one configured secret would let any tenant forge events
that another tenant's receiver accepts. So the configured `LORAQ_WEBHOOKS__SECRET` is a master
key that signs nothing itself: tenant T's secret is

    whsec_ + base64(HMAC-SHA256(master key bytes, "loraq-webhook-secret:" + T))

(32 bytes, a Standard Webhooks secret that any of its libraries accepts). It is stable (the same
for every gateway and webhook worker, with nothing stored), distinct per tenant, and tells nothing
about the master key or another tenant's secret. A tenant reads its own from
`GET /v1/webhook-secret`; `loraq keys create` prints it too. An API key's explicit
`webhook_secret` replaces the derived one for its tenant.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pydantic import SecretStr

if TYPE_CHECKING:  # settings validates the master secret with `master_key`
    from common.settings import ApiKey

PREFIX = "whsec_"
_CONTEXT = b"loraq-webhook-secret:"


def master_key(secret: str) -> bytes:
    """The bytes of a `whsec_<base64>` secret, as Standard Webhooks reads them."""
    return base64.b64decode(secret.removeprefix(PREFIX))


def derive(master: SecretStr, tenant: str) -> str:
    key = master_key(master.get_secret_value())
    digest = hmac.new(key, _CONTEXT + tenant.encode(), hashlib.sha256).digest()
    return PREFIX + base64.b64encode(digest).decode()


def tenant_secret(master: SecretStr | None, api_keys: Sequence[ApiKey], tenant: str) -> str | None:
    """The secret that signs `tenant`'s webhooks: its API key's own, else the one derived from
    the master secret; None when webhooks are off for it."""
    for key in api_keys:
        if key.tenant == tenant and key.webhook_secret is not None:
            return key.webhook_secret.get_secret_value()
    return None if master is None else derive(master, tenant)
