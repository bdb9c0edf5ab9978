"""Liveness (the process answers) and readiness (Redis and a worker for every model)."""

from __future__ import annotations

from typing import Literal

import orjson
from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from redis.exceptions import RedisError

from api.deps import GatewayDep
from api.models import ErrorInfo
from common.heartbeats import live_workers

router = APIRouter(tags=["health"])


class Readiness(BaseModel):
    status: Literal["ready", "not_ready"]
    redis: bool
    #: Live workers per served model.
    workers: dict[str, int]
    #: When not ready: `NOT_READY` and what is missing.
    error: ErrorInfo | None = None


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/metrics", include_in_schema=False)
async def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


@router.get(
    "/readyz",
    responses={
        200: {"model": Readiness, "description": "Redis answers and every model has a worker"},
        503: {"model": Readiness, "description": "Not ready: Redis or a model's worker is missing"},
    },
)
async def readyz(gw: GatewayDep) -> Response:
    models = dict.fromkeys(gw.settings.models, 0)
    try:
        await gw.redis.ping()
        workers = await live_workers(gw.redis)
        redis_ok = True
    except RedisError:
        workers, redis_ok = [], False
    for info in workers:
        if info.model in models:
            models[info.model] += 1
    ready = redis_ok and all(models.values())
    body: dict[str, object] = {
        "status": "ready" if ready else "not_ready",
        "redis": redis_ok,
        "workers": models,
    }
    if not ready:
        missing = [m for m, n in models.items() if not n]
        reason = "redis unreachable" if not redis_ok else f"no live worker for {missing}"
        body["error"] = {"code": "NOT_READY", "message": reason}
    return Response(
        orjson.dumps(body), status_code=200 if ready else 503, media_type="application/json"
    )
