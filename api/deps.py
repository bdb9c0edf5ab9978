"""Dependency aliases for routes.

All `async def`: they do no blocking work, and a sync dependency would take a thread of the
shared worker-thread pool on every request, where anything slow queued ahead delays them."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from api.auth import Caller, identify
from api.state import Gateway


async def get_gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


GatewayDep = Annotated[Gateway, Depends(get_gateway)]


async def get_caller(request: Request, gw: GatewayDep) -> Caller:
    return identify(gw.settings.auth, request.headers.get("authorization"))


CallerDep = Annotated[Caller, Depends(get_caller)]
