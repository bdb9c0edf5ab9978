"""Request bodies: size-limited reading and JSON or msgpack decoding into a typed model.

Parsed by hand rather than by FastAPI so that the size limit holds before anything is buffered
whole, msgpack (the SIE client's encoding) and JSON share one path, and every failure has its own
error code.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgpack
import orjson
from fastapi import Request
from pydantic import BaseModel, ValidationError

from api.errors import describe_validation
from common.errors import BodyTooLarge, InvalidInput, InvalidJson, UnsupportedMediaType

M = TypeVar("M", bound=BaseModel)

MSGPACK_TYPES = ("application/msgpack", "application/x-msgpack")


def is_msgpack(content_type: str) -> bool:
    return content_type.split(";")[0].strip().lower() in MSGPACK_TYPES


async def read_limited(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"request body is {declared} bytes, over the limit of {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"request body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def decode(raw: bytes, content_type: str) -> Any:
    kind = content_type.split(";")[0].strip().lower()
    if is_msgpack(kind):
        try:
            return msgpack.unpackb(raw, raw=False)
        except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
            raise InvalidJson(f"body is not valid msgpack: {exc}") from exc
    if kind not in ("", "application/json") and not kind.endswith("+json"):
        raise UnsupportedMediaType(
            f"unsupported content type {kind!r}; send application/json or application/msgpack"
        )
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidJson(f"body is not valid JSON: {exc}") from exc


async def parse_body(request: Request, model: type[M], limit: int) -> M:
    data = decode(await read_limited(request, limit), request.headers.get("content-type", ""))
    if not isinstance(data, dict):
        raise InvalidInput("body must be an object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidInput(describe_validation(list(exc.errors()))) from exc  # type: ignore[arg-type]
