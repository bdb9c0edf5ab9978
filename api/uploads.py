"""multipart/form-data uploads streamed into the object store, never held whole.

The event loop only receives the body's chunks and counts them; parsing (python_multipart's
streaming parser) and writing happen on a worker thread, a batch of about `FEED_BYTES` at a
time, so a 100 MB upload neither sits in memory nor holds the loop, and a slow client holds no
thread while its bytes are on the way. The file part goes to a store writer opened when the part
starts; the store makes it visible only when the writer closes cleanly, which happens only once
the whole form has arrived and checked out, so a refused, cut-off or oversized upload leaves
nothing behind.

Bounds: the file part's bytes (`max_file_bytes`, 413 as soon as they pass it), the body
(`max_file_bytes + FORM_OVERHEAD`, 413 at once when Content-Length says more), the number
of parts, each part's headers (the parser's own limits), and the size of small text fields.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from typing import Any

from anyio import CancelScope, CapacityLimiter, to_thread
from fastapi import Request
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect

from api.files import clean_filename
from common.errors import FileTooLarge, InvalidInput, LoraqError, UnsupportedMediaType
from common.object_store import Writer

#: Body bytes beside the file: boundaries, part headers, small fields.
FORM_OVERHEAD = 64 * 1024
MAX_PARTS = 8
MAX_FIELD_BYTES = 1024
#: Body bytes handed to the worker thread at once.
FEED_BYTES = 1024 * 1024
#: After a refusal, the rest of a body this small is read and dropped, so the client, still
#: sending, reads the answer instead of a reset connection.
DRAIN_BYTES = 1024 * 1024
FILE_FIELD = "file"


def boundary_of(content_type: str) -> bytes:
    kind, params = parse_options_header(content_type)
    if kind != b"multipart/form-data":
        shown = kind.decode("latin-1")[:100] or "none"
        raise UnsupportedMediaType(
            f"unsupported content type {shown!r}; upload a file as multipart/form-data"
        )
    boundary = params.get(b"boundary", b"")
    if not boundary:
        raise InvalidInput("multipart/form-data without a boundary parameter")
    return boundary


def too_large(max_file_bytes: int, size: str) -> FileTooLarge:
    return FileTooLarge(
        f"the upload is {size} bytes; files may be at most {max_file_bytes} bytes, and the form "
        f"around one at most {FORM_OVERHEAD} more"
    )


class StreamedForm:
    """A form of file parts (`file`, up to `max_files` of them) and small text fields, fed in
    blocks on worker threads (one at a time). `open_file` opens a writer for a part by its
    cleaned filename; `max_file_bytes` bounds all file parts together. `checks` maps each
    allowed text field to a check run as soon as its part ends, so a bad field before the file
    refuses the upload before its bytes are read; the fields in `required` (all of them unless
    given) must be there."""

    def __init__(
        self,
        boundary: bytes,
        open_file: Callable[[str], contextlib.AbstractContextManager[Writer]],
        max_file_bytes: int,
        checks: Mapping[str, Callable[[str], None]],
        max_files: int = 1,
        required: Collection[str] | None = None,
    ) -> None:
        callbacks: Any = {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        }
        try:
            self._parser = MultipartParser(boundary, callbacks)
        except FormParserError as exc:
            raise InvalidInput(f"bad multipart boundary: {exc}") from exc
        self._open_file = open_file
        self.max_file_bytes = max_file_bytes
        self._checks = checks
        self._max_files = max_files
        self._required = set(checks if required is None else required)
        self._exits = contextlib.ExitStack()
        self._writer: Writer | None = None
        self._parts = 0
        self._headers: dict[bytes, bytes] = {}
        self._field_name, self._field_value = bytearray(), bytearray()
        self._current: str | None = None
        self._text = bytearray()
        self._ended = False
        self.filenames: list[str] = []
        self.nbytes = 0
        self.fields: dict[str, str] = {}

    @property
    def filename(self) -> str | None:
        return self.filenames[0] if self.filenames else None

    def feed(self, blocks: list[bytes]) -> None:
        try:
            for block in blocks:
                self._parser.write(block)
        except FormParserError as exc:
            raise InvalidInput(f"malformed multipart body: {exc}") from exc

    def finish(self) -> None:
        """The form must be whole, and only then is the file kept."""
        if not self._ended:
            raise InvalidInput("the multipart body ends before its closing boundary")
        if not self.filenames:
            raise InvalidInput(
                f"no {FILE_FIELD!r} part: upload the file as the {FILE_FIELD!r} field"
            )
        missing = sorted(self._required - set(self.fields))
        if missing:
            raise InvalidInput(f"missing form field {missing[0]!r}")
        self._exits.close()

    def abort(self, exc: BaseException) -> None:
        """The store drops what was written of the file."""
        self._exits.__exit__(type(exc), exc, exc.__traceback__)

    def _part_begin(self) -> None:
        self._parts += 1
        if self._parts > MAX_PARTS:
            raise InvalidInput(f"more than {MAX_PARTS} parts in the form")
        self._headers.clear()
        self._current = None

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field_name += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._field_value += data[start:end]

    def _header_end(self) -> None:
        self._headers[bytes(self._field_name).lower()] = bytes(self._field_value)
        self._field_name.clear()
        self._field_value.clear()

    def _headers_finished(self) -> None:
        disposition = self._headers.get(b"content-disposition", b"").decode("latin-1")
        kind, params = parse_options_header(disposition)
        if kind != b"form-data" or b"name" not in params:
            raise InvalidInput(
                "each part needs a 'Content-Disposition: form-data; name=...' header"
            )
        name = params[b"name"].decode("utf-8", "replace")
        if name == FILE_FIELD:
            if len(self.filenames) >= self._max_files:
                raise InvalidInput(
                    f"more than {self._max_files} {FILE_FIELD!r} part(s) in one upload"
                )
            filename = clean_filename(params.get(b"filename", b"").decode("utf-8", "replace"))
            self.filenames.append(filename)
            self._writer = self._exits.enter_context(self._open_file(filename))
        elif name in self._checks:
            if name in self.fields:
                raise InvalidInput(f"form field {name!r} is given twice")
            self._text.clear()
        else:
            known = sorted([FILE_FIELD, *self._checks])
            raise InvalidInput(f"unknown form field {name[:100]!r}; the fields are {known}")
        self._current = name

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        writer = self._writer
        if self._current == FILE_FIELD and writer is not None:
            self.nbytes += end - start
            if self.nbytes > self.max_file_bytes:
                raise FileTooLarge(f"the file is over the limit of {self.max_file_bytes} bytes")
            writer.write(data[start:end])
            return
        self._text += data[start:end]
        if len(self._text) > MAX_FIELD_BYTES:
            raise InvalidInput(f"form field {self._current!r} is over {MAX_FIELD_BYTES} bytes")

    def _part_end(self) -> None:
        name = self._current
        if name is None or name == FILE_FIELD:
            return
        try:
            value = self._text.decode()
        except UnicodeDecodeError:
            raise InvalidInput(f"form field {name!r} is not UTF-8") from None
        self._checks[name](value)
        self.fields[name] = value

    def _end(self) -> None:
        self._ended = True


class _Body:
    """The request body's chunks, counted, in blocks of about `FEED_BYTES`."""

    def __init__(self, request: Request, max_file_bytes: int) -> None:
        self._chunks = request.stream()
        self._max_file_bytes = max_file_bytes
        self._limit = max_file_bytes + FORM_OVERHEAD
        self.received = 0
        self.declared = request.headers.get("content-length")
        declared = self.declared or ""
        if declared.isdigit() and int(declared) > self._limit:
            raise too_large(max_file_bytes, declared)

    async def blocks(self) -> AsyncIterator[list[bytes]]:
        pending: list[bytes] = []
        size = 0
        async for chunk in self._chunks:
            self.received += len(chunk)
            if self.received > self._limit:
                raise too_large(self._max_file_bytes, f"over {self._limit}")
            pending.append(chunk)
            size += len(chunk)
            if size >= FEED_BYTES:
                yield pending
                pending, size = [], 0
        if pending:
            yield pending

    async def drain(self) -> None:
        if self.declared is None or not self.declared.isdigit():
            return
        if int(self.declared) - self.received > DRAIN_BYTES:
            return
        with contextlib.suppress(Exception):  # the answer goes out whatever became of the body
            async for _ in self._chunks:
                pass


async def receive_form(request: Request, form: StreamedForm, limiter: CapacityLimiter) -> None:
    """Streams the body through `form` on worker threads; on any failure the file part is
    dropped (also when the request is cancelled) before the error goes on."""
    body = _Body(request, form.max_file_bytes)
    try:
        async for blocks in body.blocks():
            await to_thread.run_sync(form.feed, blocks, limiter=limiter)
        await to_thread.run_sync(form.finish, limiter=limiter)
    except BaseException as exc:
        with CancelScope(shield=True):
            await to_thread.run_sync(form.abort, exc, limiter=limiter)
        if isinstance(exc, ClientDisconnect):
            raise InvalidInput("the client went away before the upload ended") from exc
        if isinstance(exc, LoraqError):
            await body.drain()
        raise
