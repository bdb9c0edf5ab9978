"""Async jobs: submit (202 + Location), poll (optionally long), cancel."""

from __future__ import annotations

import re
import time
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import Response

from api.auth import Caller
from api.body import parse_body
from api.deps import CallerDep, GatewayDep
from api.idempotency import MAX_KEY_LENGTH, body_digest
from api.models import JobCreated, JobRequest
from api.openapi import JobView, error_responses, request_body
from api.state import Gateway
from api.submit import new_job_id, submit
from common.errors import JobNotCancellable, JobNotFound, QueueUnavailable
from common.job_view import job_json, job_view
from common.metrics import JOBS_FINISHED
from common.schemas import StoredJob, iso

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

MAX_WAIT_S = 60
_WAIT_DOC = (
    "Long poll: hold the request up to this many seconds until the job is terminal, instead of "
    "the client polling in a loop."
)
_JOB_ID_RE = re.compile(r"job_[A-Za-z0-9_-]{16,64}")
_IDEMPOTENCY_DOC = (
    "A retry with the same key and body gets the job the first request created (200); with "
    "another body, 422 `IDEMPOTENCY_KEY_REUSED`."
)
_JOB_LINKS = {
    "GetJob": {"operationId": "get_job", "parameters": {"job_id": "$response.body#/id"}},
    "CancelJob": {"operationId": "cancel_job", "parameters": {"job_id": "$response.body#/id"}},
}
_CREATED: dict[int | str, dict[str, Any]] = {
    202: {
        "description": "Queued",
        "headers": {"Location": {"description": "The job's URL", "schema": {"type": "string"}}},
        "links": _JOB_LINKS,
    },
    200: {
        "model": JobCreated,
        "description": "The job this Idempotency-Key already stands for",
        "links": _JOB_LINKS,
    },
    **error_responses(400, 403, 404, 413, 415, 422, 429),
}
_JOB: dict[int | str, dict[str, Any]] = {
    200: {"model": JobView, "description": "The job"},
    **error_responses(404, 422),
}


def job_url(job_id: str) -> str:
    return f"/v1/jobs/{job_id}"


def created(job: StoredJob, status_code: int) -> Response:
    body = {
        "id": job.id,
        "status": job.status.value,
        "created_at": iso(job.created_at),
        "links": {"self": job_url(job.id)},
    }
    return Response(
        JobCreated.model_validate(body).model_dump_json(),
        status_code=status_code,
        media_type="application/json",
        headers={"Location": job_url(job.id)},
    )


def not_found(job_id: str) -> JobNotFound:
    """Another tenant's job is as unknown as a job that never existed."""
    return JobNotFound(f"job {job_id[:100]!r} not found")


async def owned_job(gw: Gateway, who: Caller, job_id: str) -> StoredJob:
    job = await gw.store.get(job_id) if _JOB_ID_RE.fullmatch(job_id) else None
    if job is None or job.tenant != who.tenant:
        raise not_found(job_id)
    return job


@router.post(
    "",
    status_code=202,
    response_model=JobCreated,
    responses=_CREATED,
    openapi_extra=request_body(JobRequest),
)
async def create_job(
    request: Request,
    gw: GatewayDep,
    who: CallerDep,
    idempotency_key: Annotated[
        str | None, Header(min_length=1, max_length=MAX_KEY_LENGTH, description=_IDEMPOTENCY_DOC)
    ] = None,
) -> Response:
    body = await parse_body(request, JobRequest, gw.settings.limits)
    if idempotency_key is None:
        return created(await submit(gw, who, body.model, body, body.webhook), 202)
    job_id = new_job_id()
    digest = body_digest(body.model_dump_json())
    first = await gw.idempotency.reserve(who.tenant, idempotency_key, digest, job_id)
    if first is not None:
        job = await gw.idempotency.first_job(first)
        if job is not None:
            return created(job, 200)
        if not await gw.idempotency.take_over(who.tenant, idempotency_key, digest, first, job_id):
            raise QueueUnavailable("another request with this Idempotency-Key is creating its job")
    try:
        job = await submit(gw, who, body.model, body, body.webhook, job_id=job_id)
    except Exception:  # a Redis error too: submit leaves no live job behind when it raises
        await gw.idempotency.release(who.tenant, idempotency_key)
        raise
    return created(job, 202)


@router.get("/{job_id}", operation_id="get_job", responses=_JOB)
async def get_job(
    job_id: str,
    gw: GatewayDep,
    who: CallerDep,
    wait: Annotated[float, Query(ge=0, le=MAX_WAIT_S, description=_WAIT_DOC)] = 0,
) -> Response:
    if not _JOB_ID_RE.fullmatch(job_id):
        raise not_found(job_id)
    if wait:
        job, result = await gw.waiter.wait(job_id, wait, who.tenant)
    else:
        job, result = await gw.store.get_with_result(job_id)
    if job is None or job.tenant != who.tenant:
        raise not_found(job_id)
    view = job_view(job, result, job_url(job.id), internal=who.admin)
    return Response(job_json(view), media_type="application/json")


@router.delete("/{job_id}", operation_id="cancel_job", responses={**_JOB, **error_responses(409)})
async def cancel_job(job_id: str, gw: GatewayDep, who: CallerDep) -> Response:
    """Cancels a queued or running job. A running job's worker stops its remaining rows at the
    next batch boundary; its items count against the key's quota until the worker has stopped."""
    await owned_job(gw, who, job_id)
    outcome = await gw.store.cancel(job_id, time.time())
    if not outcome.applied:
        raise JobNotCancellable(f"job {job_id} is already {outcome.previous}")
    if outcome.webhook_due:
        await gw.publisher.webhook(job_id)
    job = await owned_job(gw, who, job_id)
    JOBS_FINISHED.labels(job.model, "cancelled", "").inc()
    view = job_view(job, None, job_url(job.id), internal=who.admin)
    return Response(job_json(view), media_type="application/json")
