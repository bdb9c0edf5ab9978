"""What the gateway routes by: live workers per model (from heartbeats) and queue depths.

Operators (admin keys; everyone with auth disabled) see it all. Any other key sees, per model,
the queue depth, how many workers are live, and which of its own adapters (those its
`lora_allow` names) are warm: other tenants' adapters and the workers' identities are not its
business.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api.auth import Caller
from api.cluster_view import ClusterView
from api.deps import CallerDep, GatewayDep

router = APIRouter(tags=["operations"])


def full_view(table: ClusterView, model: str) -> dict[str, Any]:
    return {
        "queued": table.depth[model],
        "workers": [w.model_dump() for w in table.workers[model]],
        "loads": table.loads(model),
    }


def tenant_view(table: ClusterView, model: str, who: Caller) -> dict[str, Any]:
    warm = {a for w in table.workers[model] for a in w.warm_adapters if who.owns(a)}
    return {
        "queued": table.depth[model],
        "live_workers": len(table.workers[model]),
        "warm_adapters": sorted(warm),
    }


@router.get("/v1/workers")
async def workers(gw: GatewayDep, who: CallerDep) -> dict[str, Any]:
    table = gw.cluster
    return {
        "refreshed_at": table.refreshed_at,
        "models": {
            model: full_view(table, model) if who.admin else tenant_view(table, model, who)
            for model in gw.settings.models
        },
    }
