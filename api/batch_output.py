"""A batch's output: one part per chunk as its job finishes, then the files the user downloads,
assembled from the parts in chunk order. Blocking: the runner calls these on worker threads.

Parts are named by chunk index and written whole or not at all, so a chunk answered twice
(a runner that died after writing it and before recording it) leaves one part: no line is ever
in the output twice. JSONL output is exactly OpenAI's batch output; `npy` is one float32 matrix
plus a JSON line per row (`custom_id`, `index` within its line's inputs); `parquet` has one row
per input with the vector as a fixed-size float32 list. The columnar formats need one width for
every row: a line whose vectors have another (another model, other `dimensions`) is answered in
the error file instead.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

import numpy as np
import orjson

from api.batch_input import error_line, in_key, request_id, validation_errors_key
from api.routes.embeddings import shorten
from common.errors import InvalidInput, LoraqError
from common.object_store import ObjectStore, Writer

PARQUET_ROWS_PER_GROUP = 8192


def out_key(batch_id: str, chunk: int) -> str:
    return f"batches/{batch_id}/out/{chunk}"


def vectors_key(batch_id: str, chunk: int) -> str:
    return f"batches/{batch_id}/vec/{chunk}"


def errors_key(batch_id: str, part: int | str) -> str:
    return f"batches/{batch_id}/err/{part}"


def result_key(batch_id: str, name: str) -> str:
    """Where the files a user downloads live: outside `batches/<id>/`, which goes at the end."""
    return f"outputs/{batch_id}/{name}"


def read_chunk(
    store: ObjectStore, batch_id: str, chunk: int
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    with store.open_read(in_key(batch_id, chunk)) as stream:
        header = json.loads(stream.readline())
        return header, [json.loads(line) for line in stream]


@dataclass(frozen=True)
class ChunkOutcome:
    completed: int
    failed: int
    dims: int | None  # the width its rows were written with (columnar formats fix it)


def _line_vectors(entry: dict[str, Any], rows: np.ndarray) -> np.ndarray:
    return shorten(rows, entry["dimensions"])


def _response(batch_id: str, entry: dict[str, Any], vectors: np.ndarray, tokens: int) -> bytes:
    """orjson writes the float32 rows straight from the array, as `/v1/embeddings` does (the
    stdlib's json cost more gateway CPU than the rest of a batch: `bench/batch.py`)."""
    data: list[Any]
    if entry["encoding_format"] == "base64":
        data = [base64.b64encode(row.astype("<f4").tobytes()).decode() for row in vectors]
    else:
        data = list(vectors.astype("<f4"))
    rid = request_id(batch_id, entry["line"])
    body = {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(data)],
        "model": entry["model"],
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
    line = {
        "id": rid, "custom_id": entry["custom_id"],
        "response": {"status_code": 200, "request_id": rid, "body": body}, "error": None,
    }  # fmt: skip
    return orjson.dumps(line, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE)


def _apportion(entries: list[dict[str, Any]], tokens: int) -> list[int]:
    """A chunk's token count shared out by its lines' characters (the worker counts a job's
    tokens, not each input's)."""
    chars = [sum(len(t) for t in e["texts"]) for e in entries]
    total = max(1, sum(chars))
    return [round(tokens * c / total) for c in chars]


def write_chunk(
    store: ObjectStore,
    batch_id: str,
    chunk: int,
    entries: list[dict[str, Any]],
    matrix: np.ndarray,
    tokens: int,
    output_format: str,
    width: int | None,
) -> ChunkOutcome:
    """The chunk's answered lines into its output part, lines it cannot answer (a width other
    than the batch's) into its error part."""
    start, completed, failed = 0, 0, 0
    shares = _apportion(entries, tokens)
    columnar = output_format != "jsonl"
    key = vectors_key(batch_id, chunk) if columnar else out_key(batch_id, chunk)
    with store.open_write(key) as out, store.open_write(errors_key(batch_id, chunk)) as errors:
        for entry, share in zip(entries, shares, strict=True):
            rows = matrix[start : start + len(entry["texts"])]
            start += len(entry["texts"])
            try:
                vectors = _line_vectors(entry, rows)
                if columnar:
                    width = width or vectors.shape[1]
                    _write_rows(out, entry, vectors, width)
                else:
                    out.write(_response(batch_id, entry, vectors, share))
                completed += 1
            except LoraqError as exc:
                errors.write(error_line(batch_id, entry["line"], entry["custom_id"], exc))
                failed += 1
    return ChunkOutcome(completed, failed, width)


def _write_rows(out: Writer, entry: dict[str, Any], vectors: np.ndarray, width: int) -> None:
    """Columnar parts: per line, one JSON header then its float32 rows, so the final writers can
    stream them without a second read of anything."""
    if vectors.shape[1] != width:
        raise InvalidInput(
            f"vectors of width {vectors.shape[1]} in a batch whose columnar output is {width} wide"
        )
    header = {"custom_id": entry["custom_id"], "rows": len(vectors)}
    out.write(json.dumps(header, separators=(",", ":")).encode() + b"\n")
    out.write(np.ascontiguousarray(vectors, dtype="<f4").tobytes())


def write_chunk_errors(
    store: ObjectStore,
    batch_id: str,
    part: int | str,
    entries: list[dict[str, Any]],
    error: LoraqError,
) -> int:
    with store.open_write(errors_key(batch_id, part)) as errors:
        for entry in entries:
            errors.write(error_line(batch_id, entry["line"], entry["custom_id"], error))
    return len(entries)


def _copy(store: ObjectStore, key: str, out: Writer) -> None:
    try:
        with store.open_read(key) as stream:
            while block := stream.read(1024 * 1024):
                out.write(block)
    except FileNotFoundError:
        return


def _rows(store: ObjectStore, key: str, width: int) -> Iterator[tuple[str, np.ndarray]]:
    try:
        with store.open_read(key) as stream:
            yield from _read_rows(stream, width)
    except FileNotFoundError:
        return


def _read_rows(stream: IO[bytes], width: int) -> Iterator[tuple[str, np.ndarray]]:
    while header := stream.readline():
        meta = json.loads(header)
        data = stream.read(meta["rows"] * width * 4)
        yield meta["custom_id"], np.frombuffer(data, dtype="<f4").reshape(meta["rows"], width)


@dataclass(frozen=True)
class Assembled:
    output: tuple[str, int] | None  # (object key, bytes)
    errors: tuple[str, int] | None
    ids: tuple[str, int] | None


def assemble(
    store: ObjectStore,
    batch_id: str,
    chunks: int,
    output_format: str,
    width: int | None,
    stop_errors: bool,
) -> Assembled:
    """The downloadable files from the parts: output (if any line was answered), errors (if any
    line failed) and, for `npy`, the ids."""
    error_parts = [
        validation_errors_key(batch_id),
        *(errors_key(batch_id, k) for k in range(chunks)),
    ]
    if stop_errors:
        error_parts += [errors_key(batch_id, f"stop-{k}") for k in range(chunks)]
    errors = _concat(store, result_key(batch_id, "errors.jsonl"), error_parts)
    if output_format == "jsonl":
        output = _concat(
            store,
            result_key(batch_id, "output.jsonl"),
            [out_key(batch_id, k) for k in range(chunks)],
        )
        return Assembled(output, errors, None)
    parts = [vectors_key(batch_id, k) for k in range(chunks)]
    if width is None:
        return Assembled(None, errors, None)
    if output_format == "npy":
        output, ids = _npy(store, batch_id, parts, width)
        return Assembled(output, errors, ids)
    return Assembled(_parquet(store, batch_id, parts, width), errors, None)


def _concat(store: ObjectStore, key: str, parts: list[str]) -> tuple[str, int] | None:
    with store.open_write(key) as out:
        for part in parts:
            _copy(store, part, out)
        size = out.tell()
    if size == 0:
        return None
    return key, size


def _npy(
    store: ObjectStore, batch_id: str, parts: list[str], width: int
) -> tuple[tuple[str, int] | None, tuple[str, int] | None]:
    """The .npy header holds the row count, so the parts are read twice: once to count (headers
    only would need seeks the object store does not offer), once to copy."""
    total = sum(len(rows) for part in parts for _, rows in _rows(store, part, width))
    if total == 0:
        return None, None
    key, ids_key = result_key(batch_id, "output.npy"), result_key(batch_id, "ids.jsonl")
    with store.open_write(key) as out, store.open_write(ids_key) as ids:
        header = np.lib.format.header_data_from_array_1_0(np.empty((0, width), "<f4"))
        header["shape"] = (total, width)
        buffer = _Buffer()
        np.lib.format.write_array_header_1_0(buffer, header)
        out.write(buffer.data)
        for part in parts:
            for custom_id, rows in _rows(store, part, width):
                out.write(rows.tobytes())
                for index in range(len(rows)):
                    line = {"custom_id": custom_id, "index": index}
                    ids.write(json.dumps(line, separators=(",", ":")).encode() + b"\n")
        sizes = out.tell(), ids.tell()
    return (key, sizes[0]), (ids_key, sizes[1])


class _Sink:
    """The object store's writer as the file pyarrow wants; pyarrow closes its file when done,
    which must not end the store's write (that commits it, on leaving `open_write`)."""

    closed = False

    def __init__(self, out: Writer) -> None:
        self._out = out

    def write(self, data: bytes) -> int:
        return self._out.write(bytes(data))

    def tell(self) -> int:
        return self._out.tell()

    def flush(self) -> None:
        return None

    def close(self) -> None:
        return None


class _Buffer:
    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data


def _parquet(
    store: ObjectStore, batch_id: str, parts: list[str], width: int
) -> tuple[str, int] | None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([
        ("custom_id", pa.string()), ("index", pa.int32()),
        ("embedding", pa.list_(pa.float32(), width)),
    ])  # fmt: skip
    key = result_key(batch_id, "output.parquet")
    rows = 0
    with store.open_write(key) as out:
        writer = pq.ParquetWriter(pa.PythonFile(_Sink(out), mode="w"), schema)
        group: list[tuple[str, int, np.ndarray]] = []

        def flush() -> None:
            if not group:
                return
            flat = np.concatenate([v for _, _, v in group]).astype("<f4").ravel()
            table = pa.table(
                {
                    "custom_id": [c for c, _, _ in group],
                    "index": pa.array([i for _, i, _ in group], pa.int32()),
                    "embedding": pa.FixedSizeListArray.from_arrays(pa.array(flat), width),
                },
                schema=schema,
            )
            writer.write_table(table)
            group.clear()

        for part in parts:
            for custom_id, vectors in _rows(store, part, width):
                for index, row in enumerate(vectors):
                    group.append((custom_id, index, row[None, :]))
                    rows += 1
                if len(group) >= PARQUET_ROWS_PER_GROUP:
                    flush()
        flush()
        writer.close()
        size = out.tell()
    return (key, size) if rows else None
