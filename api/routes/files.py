"""OpenAI-compatible files: upload, list, retrieve, download and delete, so the official `openai`
client's `client.files.*` works unchanged. Files belong to the caller's tenant; another tenant's
file answers 404 like one that never existed. Only purpose `batch` may be uploaded; batches add
their `batch_output` files themselves.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import IO, Annotated, Any

from anyio import CancelScope, to_thread
from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from api.deps import CallerDep, GatewayDep
from api.files import (
    FILE_ID_PATTERN,
    MAX_LIST,
    UPLOADABLE,
    FileDeleted,
    FileList,
    FileObject,
    FilePurpose,
    FileRecord,
    FileRecords,
    ListOrder,
    new_file_id,
    not_found,
    too_many_files,
    upload_key,
)
from api.openapi import error_responses
from api.uploads import FILE_FIELD, StreamedForm, boundary_of, receive_form
from common.errors import InvalidInput

router = APIRouter(prefix="/v1/files", tags=["files"])

#: Bytes read from the store per worker-thread call while a file is downloaded.
READ_BYTES = 1024 * 1024
JSONL = "application/jsonl"
OCTETS = "application/octet-stream"
MEDIA = (JSONL, OCTETS)

_FILE_LINKS = {
    name: {"operationId": op, "parameters": {"file_id": "$response.body#/id"}}
    for name, op in (
        ("RetrieveFile", "retrieve_file"),
        ("DownloadFile", "download_file"),
        ("DeleteFile", "delete_file"),
    )
}
_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": [FILE_FIELD, "purpose"],
                    "properties": {
                        FILE_FIELD: {
                            "type": "string",
                            "format": "binary",
                            "description": "The file: JSON lines of batch requests (`.jsonl`)",
                        },
                        "purpose": {"type": "string", "enum": list(UPLOADABLE)},
                    },
                    "additionalProperties": False,
                }
            }
        },
    }
}
_CODES = {
    404: "`FILE_NOT_FOUND`: no such file for this API key's tenant",
    413: "`FILE_TOO_LARGE`: the file is over `bulk.max_file_bytes`",
    415: "`UNSUPPORTED_MEDIA_TYPE`: upload as multipart/form-data",
    422: "`INVALID_INPUT`: a malformed upload form (a missing, unknown or repeated field, a "
    "purpose other than `batch`), or a query parameter out of range",
    429: "`TOO_MANY_FILES` (the tenant is at `bulk.max_files_per_tenant`; delete some), "
    "`QUOTA_EXCEEDED`",
}
_UPLOADED: dict[int | str, dict[str, Any]] = {
    200: {"model": FileObject, "description": "The file, stored", "links": _FILE_LINKS},
    **error_responses(413, 415, 422, 429, codes=_CODES),
}
_FILE: dict[int | str, dict[str, Any]] = {
    200: {"model": FileObject, "description": "The file"},
    **error_responses(404, 422, codes=_CODES),
}
_CONTENT: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The file's bytes: `application/jsonl` for a `.jsonl` file",
        "content": {kind: {"schema": {"type": "string", "format": "binary"}} for kind in MEDIA},
    },
    **error_responses(404, 422, codes=_CODES),
}


def check_purpose(value: str) -> None:
    if value not in UPLOADABLE:
        raise InvalidInput(
            f"purpose {value[:100]!r} cannot be uploaded; upload batch input files with "
            f"purpose {list(UPLOADABLE)}"
        )


@router.post(
    "",
    operation_id="upload_file",
    response_model=FileObject,
    responses=_UPLOADED,
    openapi_extra=_UPLOAD_BODY,
)
async def upload_file(request: Request, gw: GatewayDep, who: CallerDep) -> FileObject:
    """Streams the file into the object store. Over `bulk.max_file_bytes`: 413; a tenant at
    `bulk.max_files_per_tenant` files: 429 until it deletes some."""
    boundary = boundary_of(request.headers.get("content-type", ""))
    bulk = gw.settings.bulk
    await gw.rate.admit(who)
    if await gw.files.count(who.tenant) >= bulk.max_files_per_tenant:
        raise too_many_files(bulk.max_files_per_tenant)
    file_id = new_file_id()
    key = upload_key(file_id)
    form = StreamedForm(
        boundary,
        lambda _: gw.objects.open_write(key),
        bulk.max_file_bytes,
        {"purpose": check_purpose},
    )
    await receive_form(request, form, gw.files.limiter)
    purpose = UPLOADABLE[form.fields["purpose"]]
    try:
        return await gw.files.create(who.tenant, file_id, form.filename or "", purpose, form.nbytes)
    except BaseException:  # over the cap, or Redis failed: the bytes must not stay
        with CancelScope(shield=True):
            await gw.files.delete_object(key)
        raise


@router.get(
    "",
    operation_id="list_files",
    response_model=FileList,
    responses={
        200: {"model": FileList, "description": "A page of the tenant's files"},
        **error_responses(422, codes=_CODES),
    },
)
async def list_files(
    gw: GatewayDep,
    who: CallerDep,
    purpose: Annotated[FilePurpose | None, Query(description="Only files of this purpose")] = None,
    after: Annotated[
        str | None, Query(pattern=FILE_ID_PATTERN, description="The page after this file id")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIST)] = MAX_LIST,
    order: Annotated[ListOrder, Query(description="By creation time")] = "desc",
) -> FileList:
    records, more = await gw.files.list_files(who.tenant, purpose, after, limit, order)
    return FileList(
        data=[r.public() for r in records],
        first_id=records[0].id if records else None,
        last_id=records[-1].id if records else None,
        has_more=more,
    )


@router.get("/{file_id}", operation_id="retrieve_file", response_model=FileObject, responses=_FILE)
async def retrieve_file(file_id: str, gw: GatewayDep, who: CallerDep) -> FileObject:
    return (await gw.files.get(who.tenant, file_id)).public()


async def _chunks(
    files: FileRecords, reader: IO[bytes], opened: contextlib.ExitStack
) -> AsyncIterator[bytes]:
    try:
        while block := await to_thread.run_sync(reader.read, READ_BYTES, limiter=files.limiter):
            yield block
    finally:
        with CancelScope(shield=True):
            await to_thread.run_sync(opened.close, limiter=files.limiter)


def _open(files: FileRecords, record: FileRecord, opened: contextlib.ExitStack) -> IO[bytes]:
    try:
        return opened.enter_context(files.objects.open_read(record.key))
    except FileNotFoundError:
        raise not_found(record.id) from None


@router.get(
    "/{file_id}/content",
    operation_id="download_file",
    response_class=StreamingResponse,
    responses=_CONTENT,
)
async def download_file(file_id: str, gw: GatewayDep, who: CallerDep) -> StreamingResponse:
    """Streams the bytes from the store, a block at a time on a worker thread."""
    record = await gw.files.get(who.tenant, file_id)
    opened = contextlib.ExitStack()
    reader = await to_thread.run_sync(_open, gw.files, record, opened, limiter=gw.files.limiter)
    return StreamingResponse(
        _chunks(gw.files, reader, opened),
        media_type=JSONL if record.filename.endswith(".jsonl") else OCTETS,
        headers={"Content-Length": str(record.bytes)},
    )


@router.delete(
    "/{file_id}",
    operation_id="delete_file",
    response_model=FileDeleted,
    responses={
        200: {"model": FileDeleted, "description": "Deleted"},
        **error_responses(404, 422, codes=_CODES),
    },
)
async def delete_file(file_id: str, gw: GatewayDep, who: CallerDep) -> FileDeleted:
    await gw.files.delete(who.tenant, file_id)
    return FileDeleted(id=file_id)
