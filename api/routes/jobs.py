"""Async jobs: submit (202 + Location) and poll."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from api.body import parse_body
from api.deps import GatewayDep
from api.submit import submit
from common.errors import JobNotFound
from common.job_view import job_json, job_view
from common.schemas import ErrorBody, JobCreated, JobRequest, iso

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

MAX_WAIT_S = 60
_WAIT_DOC = (
    "Long poll: hold the request up to this many seconds until the job is terminal, instead of "
    "the client polling in a loop."
)
_JOB_ID_RE = re.compile(r"job_[A-Za-z0-9_-]{16,64}")
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 404, 413, 415, 422, 503)
}


def job_url(job_id: str) -> str:
    return f"/v1/jobs/{job_id}"


@router.post(
    "",
    status_code=202,
    response_model=JobCreated,
    responses=_ERRORS,
    openapi_extra={
        "requestBody": {"content": {"application/json": {"schema": JobRequest.model_json_schema()}}}
    },
)
async def create_job(request: Request, gw: GatewayDep) -> Response:
    body = await parse_body(request, JobRequest, gw.settings.limits.max_body_bytes)
    job = await submit(gw, body.model, body, body.webhook)
    created = {
        "id": job.id,
        "status": job.status.value,
        "created_at": iso(job.created_at),
        "links": {"self": job_url(job.id)},
    }
    return Response(
        JobCreated.model_validate(created).model_dump_json(),
        status_code=202,
        media_type="application/json",
        headers={"Location": job_url(job.id)},
    )


@router.get("/{job_id}", responses=_ERRORS)
async def get_job(
    job_id: str,
    gw: GatewayDep,
    wait: Annotated[float, Query(ge=0, le=MAX_WAIT_S, description=_WAIT_DOC)] = 0,
) -> Response:
    job = await gw.store.get(job_id) if _JOB_ID_RE.fullmatch(job_id) else None
    if job is None:
        raise JobNotFound(f"job {job_id[:100]!r} not found")
    if wait and not job.status.terminal:
        job = await gw.waiter.wait(job_id, wait) or await gw.store.get(job_id) or job
    result = await gw.store.get_result(job_id) if job.status == "succeeded" else None
    return Response(job_json(job_view(job, result, job_url(job.id))), media_type="application/json")
