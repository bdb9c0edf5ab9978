"""The adapter registry over the API: upload (checked as a worker would load it), list, show,
share, pin, unpin and delete. A tenant uploads into its own namespace (`<tenant>/<name>`) and
uses what it holds and what is shared with it; another tenant's adapter answers 404 like a
missing one (`api.adapters`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Annotated, Any, Literal

from anyio import CancelScope, to_thread
from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from api.adapter_import import fetch, parse_source
from api.adapter_upload import Staging, check_upload
from api.adapters import (
    AdapterRecord,
    AdapterRegistry,
    Revision,
    check_namespace,
    not_found,
    store_files,
)
from api.auth import Caller
from api.body import parse_body
from api.deps import CallerDep, GatewayDep
from api.openapi import error_responses, request_body
from api.state import Gateway
from api.uploads import StreamedForm, boundary_of, receive_form
from common.adapter_check import AdapterFiles, AdapterRules, CheckedAdapter
from common.adapters import CONFIG_FILE, WEIGHTS_FILE
from common.errors import InvalidInput, InvalidLoraId, ModelNotFound
from common.schemas import validate_lora_id

router = APIRouter(prefix="/v1/adapters", tags=["adapters"])

MAX_LIST = 100
_CODES = {
    404: "`ADAPTER_NOT_FOUND`: no such adapter, or not yours",
    422: "`INVALID_INPUT`, `INVALID_LORA_ID`, or the `ADAPTER_*` code a worker would refuse "
    "the adapter with",
}


class RevisionView(BaseModel):
    hash: str
    created_at: int
    bytes: int
    rank: int
    targets: list[str]


class AdapterView(BaseModel):
    """An adapter: `id@<hash>` names one of its revisions in any `lora_id`."""

    id: str
    object: Literal["adapter"] = "adapter"
    owner: str
    model: str
    latest: str
    rank: int
    targets: list[str]
    bytes: int
    created_at: int
    updated_at: int
    pinned: bool
    #: Only for its owner.
    shared_with: list[str] | None = None
    #: Jobs submitted with it, and loads of it by workers.
    jobs: int
    loads: int
    #: Live workers holding one of its revisions in a slot.
    warm_workers: int
    revisions: list[RevisionView]


class AdapterList(BaseModel):
    object: Literal["list"] = "list"
    data: list[AdapterView]
    last_id: str | None
    has_more: bool


class AdapterDeleted(BaseModel):
    id: str
    object: Literal["adapter"] = "adapter"
    deleted: Literal[True] = True


class ImportRequest(BaseModel):
    """An adapter imported by reference: `hf://<org>/<name>[@<revision>]` or
    `s3://<bucket>/<prefix>` (a directory holding `adapter_config.json` and
    `adapter_model.safetensors`)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=200)
    source: str = Field(max_length=1024)
    model: str | None = Field(None, max_length=512)


class Sharing(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenants: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]] = Field(
        max_length=100
    )


def _warm_workers(gw: Gateway, record: AdapterRecord) -> int:
    prefix = record.name + "@"
    workers = gw.cluster.workers.get(record.model, [])
    return sum(1 for w in workers if any(a.startswith(prefix) for a in w.warm_adapters))


def view(gw: Gateway, who: Caller, record: AdapterRecord) -> AdapterView:
    current = record.current
    return AdapterView(
        id=record.name, owner=record.owner, model=record.model, latest=record.latest,
        rank=current.rank, targets=current.targets, bytes=current.bytes,
        created_at=record.created_at, updated_at=record.updated_at, pinned=record.pinned,
        shared_with=record.shared if who.admin or who.tenant == record.owner else None,
        jobs=record.jobs, loads=record.loads, warm_workers=_warm_workers(gw, record),
        revisions=[RevisionView(**vars(r)) for r in record.revisions],
    )  # fmt: skip


def adapter_name(org: str, name: str) -> str:
    """The path's adapter, or 404 for one that cannot exist (never a revision)."""
    full = f"{org}/{name}"
    try:
        validate_lora_id(full)
    except InvalidLoraId:
        raise not_found(full) from None
    if "@" in full:
        raise not_found(full)
    return full


def _upload_checks(gw: Gateway, who: Caller) -> dict[str, Callable[[str], None]]:
    def check_name(value: str) -> None:
        validate_lora_id(value)
        if "@" in value:
            raise InvalidInput("name the adapter without a revision: each upload makes one")
        check_namespace(who, value)

    def check_model(value: str) -> None:
        if value not in gw.settings.models:
            raise ModelNotFound(f"model {value[:100]!r} is not served here")

    return {"name": check_name, "model": check_model}


def _upload_body() -> dict[str, Any]:
    """Multipart files, or a JSON `ImportRequest`."""
    form = {
        "type": "object",
        "required": ["name", "file"],
        "properties": {
            "name": {"type": "string", "description": "`<org>/<name>`"},
            "model": {"type": "string", "description": "The base model"},
            "file": {
                "type": "array",
                "items": {"type": "string", "format": "binary"},
                "description": f"{CONFIG_FILE} and {WEIGHTS_FILE}, or one .tar, .tar.gz or "
                ".zip of the adapter's directory",
            },
        },
    }
    body = request_body(ImportRequest)
    body["requestBody"]["content"]["multipart/form-data"] = {"schema": form}
    return body


@router.post(
    "",
    operation_id="upload_adapter",
    response_model=AdapterView,
    status_code=201,
    responses={
        201: {"model": AdapterView, "description": "A new revision (or the same files again)"},
        **error_responses(400, 403, 404, 413, 415, 422, 429, 503, codes=_CODES),
    },
    openapi_extra=_upload_body(),
)
async def upload_adapter(request: Request, gw: GatewayDep, who: CallerDep) -> AdapterView:
    """The files (multipart) are streamed to the gateway's disk, or fetched from the source a
    JSON body names (`hf://...`, `s3://...`), then checked with the worker's rules on a worker
    thread and stored as an immutable revision named by their content hash, which becomes the
    adapter's latest: new jobs take it at once, jobs already queued keep theirs."""
    content_type = request.headers.get("content-type", "")
    imported = content_type.split(";")[0].strip().lower() == "application/json"
    if imported:
        body = await parse_body(request, ImportRequest, gw.settings.limits)
        checks = _upload_checks(gw, who)
        checks["name"](body.name)
        if body.model is not None:
            checks["model"](body.model)
        ref = parse_source(body.source, gw.settings.adapters)
    else:
        boundary = boundary_of(content_type)
    await gw.rate.admit(who)
    staging = await to_thread.run_sync(Staging)
    try:
        if imported:
            name, model = body.name, body.model
            await gw.adapters.precheck(name)
            await to_thread.run_sync(
                fetch, name, ref, staging.parts_dir, _rules(gw), gw.settings.adapters,
                limiter=gw.adapters.limiter,
            )  # fmt: skip
        else:
            name, model = await _receive(request, gw, who, staging, boundary)
        model = model or next(iter(gw.settings.models))
        files, checked = await _check(gw, staging, name, model)
    finally:
        with CancelScope(shield=True):
            await to_thread.run_sync(staging.close)
    revision = Revision(
        hash=files.content_hash, created_at=int(time.time()),
        bytes=len(files.config) + len(files.weights), rank=checked.rank,
        targets=sorted(set(_suffixes(checked.modules))),
    )  # fmt: skip
    await _store(gw.adapters, name, model, revision, files.config, files.weights)
    record = await gw.adapters.visible(who, name)
    return view(gw, who, record)


async def _receive(
    request: Request, gw: Gateway, who: Caller, staging: Staging, boundary: bytes
) -> tuple[str, str | None]:
    """The form's parts into `staging`; its `name` and `model` fields."""
    form = StreamedForm(
        boundary, staging.open_part, gw.settings.adapters.max_upload_bytes,
        _upload_checks(gw, who), max_files=2, required=("name",),
    )  # fmt: skip
    await receive_form(request, form, gw.adapters.check_limiter)
    name = form.fields["name"]
    await gw.adapters.precheck(name)
    return name, form.fields.get("model")


async def _check(
    gw: Gateway, staging: Staging, name: str, model: str
) -> tuple[AdapterFiles, CheckedAdapter]:
    base = await gw.adapters.base(model)
    rules, limiter = _rules(gw), gw.adapters.check_limiter
    max_upload = gw.settings.adapters.max_upload_bytes
    directory = await to_thread.run_sync(
        staging.adapter_dir, name, rules, max_upload, limiter=limiter
    )
    return await to_thread.run_sync(check_upload, name, directory, base, rules, limiter=limiter)


def _suffixes(modules: Iterable[str]) -> list[str]:
    """`encoder.layer.3.attention.self.query` -> `attention.self.query`."""
    return [m.split(".", 3)[-1] if m.startswith("encoder.layer.") else m for m in modules]


def _rules(gw: Gateway) -> AdapterRules:
    ad = gw.settings.adapters
    return AdapterRules(ad.max_rank, ad.max_file_bytes, ad.base_mismatch)


async def _store(
    registry: AdapterRegistry, name: str, model: str, revision: Revision, config: bytes,
    weights: bytes,
) -> None:  # fmt: skip
    files = {CONFIG_FILE: config, WEIGHTS_FILE: weights}
    await to_thread.run_sync(
        store_files, registry.objects, name, revision.hash, files, limiter=registry.limiter
    )
    try:
        await registry.add_revision(name, model, revision)
    except BaseException:  # over a cap, or Redis failed: the files must not stay
        with CancelScope(shield=True):
            await registry.delete_files(name, revision.hash)
        raise
    await registry.sweep()


@router.get(
    "",
    operation_id="list_adapters",
    response_model=AdapterList,
    responses={200: {"model": AdapterList, "description": "A page, by name"}},
)
async def list_adapters(
    gw: GatewayDep,
    who: CallerDep,
    after: Annotated[
        str | None, Query(max_length=200, description="The page after this id")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIST)] = MAX_LIST,
) -> AdapterList:
    """The caller's own adapters and those shared with it."""
    names = [n for n in await gw.adapters.names(who) if after is None or n > after]
    records = [r for n in names[:limit] if (r := await gw.adapters.load(n)) is not None]
    data = [view(gw, who, r) for r in records]
    return AdapterList(
        data=data, last_id=data[-1].id if data else None, has_more=len(names) > limit
    )


_ONE = {
    200: {"model": AdapterView, "description": "The adapter"},
    **error_responses(403, 404, 429, codes=_CODES),
}


@router.get("/{org}/{name}", operation_id="get_adapter", response_model=AdapterView, responses=_ONE)
async def get_adapter(org: str, name: str, gw: GatewayDep, who: CallerDep) -> AdapterView:
    return view(gw, who, await gw.adapters.visible(who, adapter_name(org, name)))


@router.delete(
    "/{org}/{name}",
    operation_id="delete_adapter",
    response_model=AdapterDeleted,
    responses={
        200: {"model": AdapterDeleted, "description": "Deleted"},
        **error_responses(403, 404, codes=_CODES),
    },
)
async def delete_adapter(org: str, name: str, gw: GatewayDep, who: CallerDep) -> AdapterDeleted:
    """New jobs naming it are refused at once; jobs already queued still run (its files stay
    `adapters.delete_grace_s`); workers drop it from their slots on their next heartbeat."""
    full = adapter_name(org, name)
    await gw.adapters.delete(who, full)
    return AdapterDeleted(id=full)


@router.post(
    "/{org}/{name}/pin", operation_id="pin_adapter", response_model=AdapterView, responses=_ONE
)
async def pin_adapter(org: str, name: str, gw: GatewayDep, who: CallerDep) -> AdapterView:
    """Its latest revision is loaded into a slot of every worker of its model and never
    evicted, from their next heartbeat on (at most `adapters.max_pinned_per_tenant`)."""
    full = adapter_name(org, name)
    await gw.adapters.pin(who, full)
    return view(gw, who, await gw.adapters.visible(who, full))


@router.post(
    "/{org}/{name}/unpin", operation_id="unpin_adapter", response_model=AdapterView, responses=_ONE
)
async def unpin_adapter(org: str, name: str, gw: GatewayDep, who: CallerDep) -> AdapterView:
    full = adapter_name(org, name)
    await gw.adapters.unpin(who, full)
    return view(gw, who, await gw.adapters.visible(who, full))


@router.put(
    "/{org}/{name}/sharing",
    operation_id="share_adapter",
    response_model=AdapterView,
    responses={**_ONE, **error_responses(400, 413, 415, 422, codes=_CODES)},
    openapi_extra=request_body(Sharing),
)
async def share_adapter(
    org: str, name: str, request: Request, gw: GatewayDep, who: CallerDep
) -> AdapterView:
    """The tenants that may use the adapter (and see it listed), replacing the former list."""
    body = await parse_body(request, Sharing, gw.settings.limits)
    full = adapter_name(org, name)
    await gw.adapters.share(who, full, body.tenants)
    return view(gw, who, await gw.adapters.visible(who, full))
