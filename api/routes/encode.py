"""Synchronous encode in SIE's wire format: the same queue as jobs, waited on with a bound.

msgpack by default, JSON when the client accepts JSON but not msgpack (docs/api.md, "Synchronous
encode (SIE wire format)"). On timeout the answer is 504 `JOB_TIMEOUT` carrying the job id, so
the caller can poll instead of resubmitting.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel

from api.body import MSGPACK_TYPES, parse_body
from api.deps import CallerDep, GatewayDep
from api.models import EncodeRequest
from api.openapi import REF, Timing, error_responses, request_body
from api.render import sie_response
from api.submit import submit_and_wait

router = APIRouter(tags=["encode"])


def wants_msgpack(accept: str) -> bool:
    accept = accept.lower()
    return not ("application/json" in accept and not any(t in accept for t in MSGPACK_TYPES))


class Dense(BaseModel):
    dims: int
    dtype: Literal["float32"]
    #: In msgpack, a msgpack-numpy array (raw little-endian float32 bytes), as SIE sends it.
    values: list[float]


class EncodedItem(BaseModel):
    id: str | None = None
    dense: Dense


class EncodeResponse(BaseModel):
    model: str
    items: list[EncodedItem]
    timing: Timing
    lora_id: str | None = None
    adapter_hash: str | None = None


_ENCODED = {
    "model": EncodeResponse,
    "description": "One vector per item, in order: msgpack unless the client accepts only JSON",
    "content": {"application/msgpack": {"schema": {"$ref": REF.format(model="EncodeResponse")}}},
}


@router.post(
    "/v1/encode/{model:path}",
    responses={
        200: _ENCODED,
        **error_responses(400, 403, 404, 413, 415, 422, 429, 500, 503, 504),
    },
    openapi_extra=request_body(EncodeRequest),
)
async def encode(model: str, request: Request, gw: GatewayDep, who: CallerDep) -> Response:
    body = await parse_body(request, EncodeRequest, gw.settings.limits)
    done, result = await submit_and_wait(gw, who, model, body)
    as_msgpack = wants_msgpack(request.headers.get("accept", ""))
    return Response(
        sie_response(done, result, as_msgpack),
        media_type="application/msgpack" if as_msgpack else "application/json",
    )
