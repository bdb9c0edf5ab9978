"""`GET /v1/webhook-secret`: each tenant reads its own signing secret, never the master secret
or another tenant's (`api/routes/webhook_secret.py`, `common/webhook_secret.py`)."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import httpx
from pydantic import SecretStr

from common.settings import WebhookSettings
from common.webhook_secret import derive
from tests.integration.gateway_app import SECRET, Keys, code, gateway, job_body, settings

OWN = "whsec_" + base64.b64encode(b"globex-explicit-secret-32-bytes!").decode()


def test_each_tenant_gets_its_own_secret(redis_url: str, tmp_path: Path) -> None:
    api_keys = Keys()
    entries = [
        api_keys.entry("acme"),
        api_keys.entry("acme-2", tenant="acme"),
        api_keys.entry("globex", webhook_secret=OWN),
    ]
    s = settings(redis_url, tmp_path, entries)

    async def scenario() -> dict[str, httpx.Response]:
        async with gateway(s) as (client, _):
            answers = {
                name: await client.get("/v1/webhook-secret", headers=api_keys.headers(name))
                for name in ("acme", "acme-2", "globex")
            }
            answers["anonymous"] = await client.get("/v1/webhook-secret")
            return answers

    answers = asyncio.run(scenario())
    acme = derive(SecretStr(SECRET), "acme")
    assert answers["acme"].json() == {"tenant": "acme", "secret": acme}
    assert answers["acme-2"].json() == answers["acme"].json()  # per tenant, not per key
    assert answers["globex"].json() == {"tenant": "globex", "secret": OWN}
    assert acme not in (SECRET, derive(SecretStr(SECRET), "globex"))
    assert code(answers["anonymous"]) == (401, "UNAUTHORIZED")


def test_no_secret_configured_answers_webhooks_disabled(redis_url: str, tmp_path: Path) -> None:
    """Neither the secret nor a job with a webhook: nothing could sign its deliveries."""
    api_keys = Keys()
    s = settings(redis_url, tmp_path, [api_keys.entry("acme")], webhooks=WebhookSettings())
    headers = api_keys.headers("acme")
    hooked = {**job_body(), "webhook": {"url": "https://example.com/h"}}

    async def scenario() -> list[httpx.Response]:
        async with gateway(s) as (client, _):
            return [
                await client.get("/v1/webhook-secret", headers=headers),
                await client.post("/v1/jobs", json=hooked, headers=headers),
            ]

    assert [code(r) for r in asyncio.run(scenario())] == [(422, "WEBHOOKS_DISABLED")] * 2
