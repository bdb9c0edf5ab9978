"""A batch's input file, read once as a stream: each line checked as the embeddings route checks
a body, good lines grouped into chunks of one model and adapter, bad lines answered in the error
part. Blocking: the runner calls it on a worker thread.

Memory stays flat whatever the file's size: lines are read one at a time (each at most
`limits.max_body_bytes`), and what is held is one open chunk per (model, adapter) pair, each
flushed to the object store when it reaches `bulk.chunk_items` texts. `custom_id`s are echoed, not
checked for uniqueness (that would hold every id seen).

Chunk parts (`batches/<id>/in/<k>`) are JSON lines: a header `{"model", "lora_id"}` then one
entry per line `{"line", "custom_id", "model", "texts", "single", "encoding_format",
"dimensions"}`. Written whole or not at all, and named by their index, so a runner that dies
mid-split and starts again overwrites the same parts.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import IO, Any

from pydantic import ValidationError

from api.adapters import Snapshot, resolve_in
from api.auth import Caller
from api.routes.embeddings import EmbeddingsRequest, split_model
from common.adapters import exists_locally
from common.errors import (
    AdapterNotFound,
    InputTooLong,
    InvalidFile,
    InvalidInput,
    InvalidJson,
    LoraqError,
    TooManyItems,
)
from common.object_store import ObjectStore
from common.settings import Settings

#: At most this many chunks are open at once; past it the fullest is flushed (a file naming
#: thousands of adapters must not hold a chunk of each).
MAX_OPEN_CHUNKS = 64


def request_id(batch_id: str, line: int) -> str:
    """The output line's `id`: the same for the same line, so a line answered again after a
    restart carries the id it had."""
    digest = hashlib.sha256(f"{batch_id}\0{line}".encode()).hexdigest()[:24]
    return f"batch_req_{digest}"


def error_line(batch_id: str, line: int, custom_id: str | None, error: LoraqError) -> bytes:
    body = {
        "id": request_id(batch_id, line),
        "custom_id": custom_id,
        "response": None,
        "error": {"code": error.code, "message": error.message},
    }
    return json.dumps(body, separators=(",", ":")).encode() + b"\n"


def in_key(batch_id: str, chunk: int) -> str:
    return f"batches/{batch_id}/in/{chunk}"


def validation_errors_key(batch_id: str) -> str:
    return f"batches/{batch_id}/err/validation"


@dataclass
class Split:
    lines: int = 0
    invalid: int = 0
    chunks: int = 0
    adapters: set[tuple[str, str]] = field(default_factory=set)  # (model, lora_id)


@dataclass
class _Open:
    model: str
    lora_id: str | None
    entries: list[dict[str, Any]] = field(default_factory=list)
    texts: int = 0


def _lines(stream: IO[bytes], limit: int) -> Iterator[tuple[int, bytes | None]]:
    """(index, line) of each non-blank line; None for one longer than `limit` (skipped to its
    end without holding it)."""
    index = 0
    while True:
        line = stream.readline(limit + 1)
        if not line:
            return
        if len(line) > limit and not line.endswith(b"\n"):
            while (rest := stream.readline(1024 * 1024)) and not rest.endswith(b"\n"):
                pass
            yield index, None
        elif line.strip():
            yield index, line
        index += 1


class _Splitter:
    def __init__(
        self,
        store: ObjectStore,
        batch_id: str,
        settings: Settings,
        who: Caller,
        errors: Any,
        registry: Mapping[str, Snapshot],
    ) -> None:
        self.store, self.batch_id, self.settings, self.who = store, batch_id, settings, who
        self.errors = errors
        self.registry = registry
        self.open: dict[tuple[str, str | None], _Open] = {}
        self.split = Split()

    def line(self, index: int, raw: bytes | None) -> None:
        self.split.lines += 1
        if self.split.lines > self.settings.bulk.max_lines:
            raise InvalidFile(f"the file has more than {self.settings.bulk.max_lines} lines")
        custom_id = None
        try:
            if raw is None:
                raise InputTooLong(
                    f"line is longer than {self.settings.limits.max_body_bytes} bytes"
                )
            data = _json_object(raw)
            custom_id = data.get("custom_id") if isinstance(data.get("custom_id"), str) else None
            self._take(index, data)
        except LoraqError as exc:
            self.split.invalid += 1
            self.errors.write(error_line(self.batch_id, index, custom_id, exc))

    def _take(self, index: int, data: dict[str, Any]) -> None:
        custom_id = data.get("custom_id")
        if not isinstance(custom_id, str) or not 0 < len(custom_id) <= 512:
            raise InvalidInput("custom_id must be a string of 1 to 512 characters")
        if data.get("method") != "POST" or data.get("url") != "/v1/embeddings":
            raise InvalidInput('each line must be {"method": "POST", "url": "/v1/embeddings"}')
        if set(data) - {"custom_id", "method", "url", "body"}:
            raise InvalidInput("a line holds custom_id, method, url and body, nothing else")
        try:
            body = EmbeddingsRequest.model_validate(data.get("body"), strict=True)
        except ValidationError as exc:
            message = exc.errors(include_url=False, include_input=False)[0]["msg"]
            raise InvalidInput(f"body: {message}"[:300]) from None
        model, lora_id = split_model(body.model, body.lora_id, set(self.settings.models))
        texts = [body.input] if isinstance(body.input, str) else body.input
        lora_id = self._check(texts, model, lora_id)
        entry = {
            "line": index, "custom_id": custom_id, "model": body.model, "texts": texts,
            "single": isinstance(body.input, str), "encoding_format": body.encoding_format,
            "dimensions": body.dimensions,
        }  # fmt: skip
        self._add(model, lora_id, entry, len(texts))

    def _check(self, texts: list[str], model: str, lora_id: str | None) -> str | None:
        limits, adapters = self.settings.limits, self.settings.adapters
        if len(texts) > limits.max_items_per_job:
            raise TooManyItems(f"{len(texts)} inputs; the limit is {limits.max_items_per_job}")
        for i, text in enumerate(texts):
            if len(text) > limits.max_text_chars:
                raise InputTooLong(
                    f"input {i} has {len(text)} characters; the limit is {limits.max_text_chars}"
                )
        self.who.may_use(lora_id)
        if lora_id is None:
            return None
        if (revision := resolve_in(self.registry, lora_id, model)) is not None:
            return revision
        checkable = adapters.check_at_submit and not adapters.remote
        if checkable and not exists_locally(adapters.dir, lora_id):
            raise AdapterNotFound(f"adapter {lora_id!r} not found")
        return lora_id

    def _add(self, model: str, lora_id: str | None, entry: dict[str, Any], texts: int) -> None:
        group = (model, lora_id)
        chunk = self.open.get(group)
        if chunk is not None and chunk.texts + texts > self.settings.bulk.chunk_items:
            self._flush(self.open.pop(group))
            chunk = None
        if chunk is None:
            if len(self.open) >= MAX_OPEN_CHUNKS:
                fullest = max(self.open, key=lambda g: self.open[g].texts)
                self._flush(self.open.pop(fullest))
            chunk = self.open[group] = _Open(model, lora_id)
        chunk.entries.append(entry)
        chunk.texts += texts
        if lora_id is not None:
            self.split.adapters.add((model, lora_id))

    def _flush(self, chunk: _Open) -> None:
        with self.store.open_write(in_key(self.batch_id, self.split.chunks)) as out:
            header = {"model": chunk.model, "lora_id": chunk.lora_id}
            out.write(json.dumps(header, separators=(",", ":")).encode() + b"\n")
            for entry in chunk.entries:
                out.write(json.dumps(entry, separators=(",", ":")).encode() + b"\n")
        self.split.chunks += 1

    def close(self) -> None:
        for group in list(self.open):
            self._flush(self.open.pop(group))


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidJson(f"line is not JSON: {str(exc)[:200]}") from None
    if not isinstance(data, dict):
        raise InvalidInput("each line must be a JSON object")
    return data


def split_input(
    store: ObjectStore,
    input_key: str,
    batch_id: str,
    settings: Settings,
    who: Caller,
    registry: Mapping[str, Snapshot],
) -> Split:
    """Chunks and the validation error part from the input file. Raises InvalidFile when the
    file cannot be used at all: missing, over `max_lines`, or without one JSON line. Registry
    adapters are pinned to their revision in `registry` (taken when the batch starts), so all
    of a batch's lines run on one revision of each."""
    try:
        with (
            store.open_read(input_key) as stream,
            store.open_write(validation_errors_key(batch_id)) as errors,
        ):
            splitter = _Splitter(store, batch_id, settings, who, errors, registry)
            for index, raw in _lines(stream, settings.limits.max_body_bytes):
                splitter.line(index, raw)
            splitter.close()
    except FileNotFoundError:
        raise InvalidFile("the input file is gone (deleted before the batch read it)") from None
    split = splitter.split
    if split.lines == 0:
        raise InvalidFile("the input file has no lines")
    if split.chunks == 0 and split.invalid == split.lines and _none_json(store, batch_id):
        raise InvalidFile("the input file is not JSON lines: no line parses as JSON")
    return split


def _none_json(store: ObjectStore, batch_id: str) -> bool:
    """Whether every error line says the line was not JSON (then the file is not JSONL at all,
    and the batch fails instead of answering each line)."""
    with store.open_read(validation_errors_key(batch_id)) as stream:
        return all(b'"code":"INVALID_JSON"' in line for line in stream)
