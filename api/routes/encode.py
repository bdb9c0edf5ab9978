"""Synchronous encode in SIE's wire format: the same queue as jobs, waited on with a bound.

msgpack by default, JSON when the client accepts JSON but not msgpack (SIE_WIRE.md). On timeout
the answer is 504 `JOB_TIMEOUT` carrying the job id, so the caller can poll instead of resubmitting.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from api.body import MSGPACK_TYPES, parse_body
from api.deps import CallerDep, GatewayDep
from api.render import sie_response
from api.submit import submit_and_wait
from common.schemas import EncodeRequest, ErrorBody

router = APIRouter(tags=["encode"])


def wants_msgpack(accept: str) -> bool:
    accept = accept.lower()
    return not ("application/json" in accept and not any(t in accept for t in MSGPACK_TYPES))


@router.post(
    "/v1/encode/{model:path}",
    responses={code: {"model": ErrorBody} for code in (400, 404, 413, 415, 422, 503, 504)},
    openapi_extra={
        "requestBody": {
            "content": {"application/json": {"schema": EncodeRequest.model_json_schema()}}
        }
    },
)
async def encode(model: str, request: Request, gw: GatewayDep, who: CallerDep) -> Response:
    body = await parse_body(request, EncodeRequest, gw.settings.limits.max_body_bytes)
    done, result = await submit_and_wait(gw, who, model, body)
    as_msgpack = wants_msgpack(request.headers.get("accept", ""))
    return Response(
        sie_response(done, result, as_msgpack),
        media_type="application/msgpack" if as_msgpack else "application/json",
    )
