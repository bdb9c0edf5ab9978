"""The gateway app in process (ASGI) on a real Redis, with API keys on and no worker: jobs stay
queued, which is all the admission, auth and polling paths need."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

from api.auth import new_key
from api.main import create_app
from api.state import Gateway
from common.settings import Settings
from tests.constants import FAKE_MODEL

SECRET = "whsec_" + "A" * 32
#: The cluster view refreshes at start and when a test calls `refresh()`, never in the
#: background: a refresh that the lifespan's end cancels can swallow the cancellation (redis-py
#: does, at times), and `ClusterView.stop` then waits on its task for good.
ROUTING = {"shards": 2, "refresh_s": 3600}


class Keys:
    """API keys by name: `entry(name, ...)` configures one (for the tenant of that name unless
    `tenant=` says otherwise), `headers(name)` uses it."""

    def __init__(self) -> None:
        self._keys: dict[str, str] = {}

    def entry(self, name: str, **fields: Any) -> dict[str, Any]:
        key, digest = new_key()
        self._keys[name] = key
        return {"tenant": name, "sha256": digest, **fields}

    def headers(self, name: str) -> dict[str, str]:
        return {"authorization": f"Bearer {self._keys[name]}"}


def settings(redis_url: str, root: Path, keys: list[dict[str, Any]], **extra: Any) -> Settings:
    """`root/adapters` is the adapter directory; the model has no files (no tokenizer) unless
    `extra`, which overrides any of these, names other `models`."""
    (root / "adapters").mkdir(exist_ok=True)
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "models": {FAKE_MODEL: str(root)},
        "adapters": {"dir": root / "adapters"},
        "routing": ROUTING,
        "webhooks": {"secret": SECRET},
        "auth": {"mode": "keys", "keys": keys},
    }
    return Settings(**{**values, **extra})


def add_adapter(root: Path, lora_id: str) -> None:
    """Enough of an adapter for the submit-time existence check."""
    (root / "adapters" / lora_id).mkdir(parents=True)
    (root / "adapters" / lora_id / "adapter_config.json").write_text("{}")


def job_body(texts: int = 1, **options: Any) -> dict[str, Any]:
    return {
        "model": FAKE_MODEL,
        "items": [{"text": f"t{i}"} for i in range(texts)],
        "params": {"options": options},
    }


@asynccontextmanager
async def gateway(s: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, Gateway]]:
    app = create_app(s)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw", timeout=60) as c:
            yield c, app.state.gateway


def code(response: httpx.Response) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]
