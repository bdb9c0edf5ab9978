"""OpenAI-compatible batches for `/v1/embeddings`: `POST /v1/batches`, `GET /v1/batches/{id}`,
`GET /v1/batches`, `POST /v1/batches/{id}/cancel`, so the official `openai` client's
`client.batches` works unchanged. The work itself is `api.batch_runner`'s; these routes only
record, read and flag batches.
"""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from api.batches import BatchCreate
from api.body import parse_body
from api.deps import CallerDep, GatewayDep
from api.models import WebhookSpec
from api.openapi import error_responses, request_body
from api.submit import webhook_target
from common.batch_record import Batch, BatchPage
from common.errors import InvalidInput

router = APIRouter(prefix="/v1/batches", tags=["batches"])

_CODES = {
    400: "`INVALID_JSON`: the body is neither valid JSON nor valid msgpack",
    404: "`BATCH_NOT_FOUND`, `FILE_NOT_FOUND` (missing and another tenant's answer alike)",
    409: "`BATCH_NOT_CANCELLABLE`: the batch is finalizing or has ended",
    422: "`INVALID_INPUT`: a malformed body or query, or an input file whose purpose is not "
    "`batch`; `WEBHOOK_URL_FORBIDDEN`, `WEBHOOKS_DISABLED`",
    429: "`TOO_MANY_BATCHES`: the tenant's open batches are at their cap; `QUOTA_EXCEEDED`",
}


def _json(model: Batch | BatchPage, status: int = 200) -> Response:
    return Response(model.model_dump_json(), status_code=status, media_type="application/json")


@router.post(
    "",
    responses={
        200: {"model": Batch, "description": "The batch, `validating`"},
        **error_responses(400, 404, 413, 415, 422, 429, 500, 503, codes=_CODES),
    },
    openapi_extra=request_body(BatchCreate),
)
async def create_batch(request: Request, gw: GatewayDep, who: CallerDep) -> Response:
    """The input file must be this tenant's and uploaded with purpose `batch`; its lines are
    checked as the batch runs (bad lines go to the error file, a file that is not JSON lines
    fails the batch)."""
    body = await parse_body(request, BatchCreate, gw.settings.limits)
    await gw.rate.admit(who)
    record = await gw.files.get(who.tenant, body.input_file_id)
    if record.purpose != "batch":
        raise InvalidInput(f"file {record.id} has purpose {record.purpose!r}, not 'batch'")
    if body.webhook is not None:
        target = webhook_target(gw, who, WebhookSpec(url=body.webhook.url))
        await gw.checks.webhook_host(target)
    key = who.key.sha256 if who.key else None
    batch = await gw.batches.create(who.tenant, key, body, time.time())
    return _json(batch)


@router.get(
    "",
    responses={
        200: {"model": BatchPage, "description": "The tenant's batches, newest first"},
        **error_responses(404, 422, 500, 503, codes=_CODES),
    },
)
async def list_batches(
    gw: GatewayDep,
    who: CallerDep,
    after: Annotated[str | None, Query(max_length=128)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> Response:
    return _json(await gw.batches.page(who.tenant, after, limit))


@router.get(
    "/{batch_id}",
    responses={
        200: {"model": Batch, "description": "The batch"},
        **error_responses(404, 422, 500, 503, codes=_CODES),
    },
)
async def get_batch(batch_id: str, gw: GatewayDep, who: CallerDep) -> Response:
    return _json(await gw.batches.get(batch_id, who.tenant))


@router.post(
    "/{batch_id}/cancel",
    responses={
        200: {"model": Batch, "description": "The batch, `cancelling` until its runner stops"},
        **error_responses(404, 409, 422, 500, 503, codes=_CODES),
    },
)
async def cancel_batch(batch_id: str, gw: GatewayDep, who: CallerDep) -> Response:
    """What is done stays: the batch ends `cancelled` with the lines answered so far in its
    output file, and every other line in its error file."""
    return _json(await gw.batches.request_cancel(batch_id, who.tenant, time.time()))
