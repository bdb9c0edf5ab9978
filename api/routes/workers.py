"""What the gateway routes by: live workers per model (from heartbeats) and queue depths."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api.deps import CallerDep, GatewayDep

router = APIRouter(tags=["operations"])


@router.get("/v1/workers")
async def workers(gw: GatewayDep, _: CallerDep) -> dict[str, Any]:
    table = gw.routing
    return {
        "refreshed_at": table.refreshed_at,
        "models": {
            model: {
                "queued": table.depth[model],
                "workers": [w.model_dump() for w in table.workers[model]],
                "loads": table.loads(model),
            }
            for model in gw.settings.models
        },
    }
