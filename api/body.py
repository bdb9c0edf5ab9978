"""Request bodies: size-limited reading and JSON or msgpack decoding into a typed model.

Parsed by hand rather than by FastAPI so that the size limit holds before anything is buffered
whole, msgpack (the SIE client's encoding) and JSON share one path, and every failure has its own
error code.

A body's bytes are bounded (`max_body_bytes`), but what decoding makes of them is not: a 16 MB
msgpack body of empty maps decodes into 16 M dicts (gigabytes), and validating a million bad
items builds a million error objects. So the shape is bounded before anything is built: the
number of values in the body is counted on its raw bytes (no objects made) against a budget
derived from `max_items_per_job`, the item list's length is checked right after decoding, and
validation stops at the first bad item. A body over `INLINE_PARSE_BYTES` is decoded and
validated in worker threads, a few at a time under their own limiter, so it neither stalls the
event loop nor takes the thread pool other requests share; a smaller one (a typical job) parses
in well under a millisecond, less than the thread handoff would cost, so it parses inline.
Nesting depth is bounded by both decoders (1024 levels).
"""

from __future__ import annotations

import itertools
import re
from functools import partial
from typing import Any, TypeVar

import msgpack
import orjson
from anyio import CapacityLimiter, to_thread
from fastapi import Request
from pydantic import BaseModel, ValidationError

from api.errors import describe_validation
from common.errors import (
    BodyTooLarge,
    InvalidInput,
    InvalidJson,
    NoItems,
    TooManyItems,
    UnsupportedMediaType,
)
from common.settings import LimitSettings

M = TypeVar("M", bound=BaseModel)

MSGPACK_TYPES = ("application/msgpack", "application/x-msgpack")
#: Bodies decoded and validated at once, per gateway process (each holds the GIL in bursts).
PARSE_THREADS = 2
#: Bodies up to this size parse on the event loop: at most about 1 ms for the worst 8 KiB.
INLINE_PARSE_BYTES = 8 * 1024
#: Values one item may bring (its object, keys, text, id, SIE fields loraq ignores), and values
#: outside the item list (model, params, webhook, ...): a body's value budget.
VALUES_PER_ITEM = 32
VALUES_BESIDE_ITEMS = 1024

# One JSON value or key: a string (skipped whole, escapes included), an opening bracket, or a
# bare scalar (number, true, false, null). Closing brackets, commas and colons are not values.
_JSON_VALUE = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[{]|[^\s\[\]{},:"]+')

_SKIP, _ARRAY, _MAP = range(3)


def _msgpack_headers() -> tuple[tuple[int, int, int], ...]:
    """Per msgpack first byte: (kind, bytes of the length field after it, a constant added to
    that length). A value of kind `_SKIP` is followed by `length` bytes of payload; `_ARRAY`
    holds `length` values; `_MAP` holds `length` key/value pairs."""
    table = [(_SKIP, 0, 0)] * 256  # fixint, nil, bool (and the never-used 0xc1)
    for n in range(16):
        table[0x80 + n] = (_MAP, 0, n)
        table[0x90 + n] = (_ARRAY, 0, n)
    for n in range(32):
        table[0xA0 + n] = (_SKIP, 0, n)  # fixstr
    fixed = {0xCA: 4, 0xCB: 8, 0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8, 0xD0: 1, 0xD1: 2, 0xD2: 4}
    fixed |= {0xD3: 8, 0xD4: 2, 0xD5: 3, 0xD6: 5, 0xD7: 9, 0xD8: 17}  # floats, ints, fixext
    for byte, size in fixed.items():
        table[byte] = (_SKIP, 0, size)
    for first, kind, extra in ((0xC4, _SKIP, 0), (0xC7, _SKIP, 1), (0xD9, _SKIP, 0)):
        for i, width in enumerate((1, 2, 4)):  # bin, ext (+ its type byte), str
            table[first + i] = (kind, width, extra)
    for byte, kind, width in ((0xDC, _ARRAY, 2), (0xDD, _ARRAY, 4), (0xDE, _MAP, 2)):
        table[byte] = (kind, width, 0)
    table[0xDF] = (_MAP, 4, 0)
    return tuple(table)


_MSGPACK_HEADERS = _msgpack_headers()


def msgpack_values(raw: bytes, budget: int) -> int:
    """How many values (keys included) the msgpack document in `raw` holds, counting at most to
    `budget + 1`: walks the headers and skips payloads, so nothing is decoded. Malformed input
    is left for the decoder to refuse."""
    pos, pending, count = 0, 1, 0
    while pending and count <= budget and pos < len(raw):
        kind, width, extra = _MSGPACK_HEADERS[raw[pos]]
        length = int.from_bytes(raw[pos + 1 : pos + 1 + width], "big") + extra
        pos += 1 + width
        pending, count = pending - 1, count + 1
        if kind == _SKIP:
            pos += length
        else:
            pending += length if kind == _ARRAY else 2 * length
    return count


def json_values(raw: bytes, budget: int) -> int:
    """How many values (keys included) the JSON text in `raw` holds, counting at most to
    `budget + 1`, without decoding it."""
    return sum(1 for _ in itertools.islice(_JSON_VALUE.finditer(raw), budget + 1))


def value_budget(limits: LimitSettings) -> int:
    return VALUES_PER_ITEM * limits.max_items_per_job + VALUES_BESIDE_ITEMS


def check_values(raw: bytes, as_msgpack: bool, limits: LimitSettings) -> None:
    budget = value_budget(limits)
    if len(raw) <= budget:  # every value takes at least one byte
        return
    counted = (msgpack_values if as_msgpack else json_values)(raw, budget)
    if counted > budget:
        raise BodyTooLarge(
            f"request body holds more than {budget} values (objects, arrays, keys, strings, "
            f"numbers); a request takes at most {limits.max_items_per_job} items"
        )


def check_items(data: dict[str, Any], field: str, limits: LimitSettings) -> None:
    """The item list's length, on the decoded body, before any model is built."""
    items = data.get(field)
    if not isinstance(items, list):
        return
    if not items:
        raise NoItems(f"{field} is empty: send at least one item")
    if len(items) > limits.max_items_per_job:
        raise TooManyItems(
            f"{len(items)} items in one request; the limit is {limits.max_items_per_job}"
        )


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


def check_media_type(content_type: str) -> bool:
    """True for msgpack, False for JSON; anything else is refused."""
    kind = content_type.split(";")[0].strip().lower()
    if kind in MSGPACK_TYPES:
        return True
    if kind not in ("", "application/json") and not kind.endswith("+json"):
        raise UnsupportedMediaType(
            f"unsupported content type {kind!r}; send application/json or application/msgpack"
        )
    return False


def decode(raw: bytes, as_msgpack: bool) -> Any:
    if as_msgpack:
        try:
            return msgpack.unpackb(raw, raw=False)
        except msgpack.StackError as exc:
            raise InvalidJson("body is not valid msgpack: nested too deeply") from exc
        except (ValueError, msgpack.ExtraData, msgpack.FormatError) as exc:
            raise InvalidJson(f"body is not valid msgpack: {exc}") from exc
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidJson(f"body is not valid JSON: {exc}") from exc


def parse(
    raw: bytes, as_msgpack: bool, model: type[M], limits: LimitSettings, items_field: str
) -> M:
    """Bytes to a validated model, bounding the shape at each step (blocking: run in a thread)."""
    check_values(raw, as_msgpack, limits)
    data = decode(raw, as_msgpack)
    if not isinstance(data, dict):
        raise InvalidInput("body must be an object")
    check_items(data, items_field, limits)
    try:  # strict: the types the document states (no `0` for false, no `"1"` for 1)
        return model.model_validate(data, strict=True)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        raise InvalidInput(describe_validation(list(errors))) from exc  # type: ignore[arg-type]


def parse_limiter() -> CapacityLimiter:
    """The limiter bodies are parsed under; one per app, made in its lifespan."""
    return CapacityLimiter(PARSE_THREADS)


async def parse_body(
    request: Request, model: type[M], limits: LimitSettings, items_field: str = "items"
) -> M:
    as_msgpack = check_media_type(request.headers.get("content-type", ""))
    raw = await read_limited(request, limits.max_body_bytes)
    if len(raw) <= INLINE_PARSE_BYTES:
        return parse(raw, as_msgpack, model, limits, items_field)
    limiter: CapacityLimiter = request.app.state.parse_limiter
    work = partial(parse, raw, as_msgpack, model, limits, items_field)
    return await to_thread.run_sync(work, limiter=limiter)
