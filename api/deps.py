"""Dependency aliases for routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from api.auth import Caller, identify
from api.state import Gateway


def get_gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


GatewayDep = Annotated[Gateway, Depends(get_gateway)]


def get_caller(request: Request, gw: GatewayDep) -> Caller:
    return identify(gw.settings.auth, request.headers.get("authorization"))


CallerDep = Annotated[Caller, Depends(get_caller)]
