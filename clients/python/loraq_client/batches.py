"""Batch files without a gateway: input lines from plain texts, and vectors out of what a
finished batch wrote (JSONL as OpenAI writes it, or loraq's npy and parquet).

Kept apart from the HTTP client because these run where no gateway is reachable: preparing an
input file on one machine, reading downloaded results on another.
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeAlias

import numpy as np
import numpy.typing as npt

from loraq_client import _json

__all__ = [
    "BatchLineError",
    "Source",
    "batch_lines",
    "load_npy_output",
    "load_parquet_output",
    "read_batch_output",
]

#: A file on disk, or its bytes already in memory (e.g. `client.file_content(id)`).
Source: TypeAlias = str | os.PathLike[str] | bytes
Vectors: TypeAlias = npt.NDArray[np.float32]
#: The only endpoint a loraq batch runs.
ENDPOINT = "/v1/embeddings"


@dataclass(frozen=True)
class BatchLineError:
    """A line the batch did not answer: the error file's `error`, or an output line whose
    response was not a 200. Returned, not raised, so one bad line does not stop a read."""

    code: str
    message: str


def batch_lines(
    texts: Iterable[str],
    model: str,
    lora_id: str | None = None,
    custom_id_prefix: str = "line-",
    texts_per_line: int = 1,
) -> Iterator[str]:
    """Input lines for a batch, newline included (`file.writelines` takes them as they are).
    Custom ids count lines from 0 in input order, so results map back by position. With
    `texts_per_line` above 1 each line's `input` is a list, one vector per text: fewer lines
    for the batch to schedule, same vectors."""
    if isinstance(texts, str | bytes):
        raise TypeError("texts must be an iterable of texts, not a single text")
    if texts_per_line < 1:
        raise ValueError(f"texts_per_line must be at least 1, not {texts_per_line}")
    chunk: list[str] = []
    number = 0
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"text {i} is not a str: {text!r:.200}")
        chunk.append(text)
        if len(chunk) == texts_per_line:
            yield _line(f"{custom_id_prefix}{number}", chunk, model, lora_id, texts_per_line)
            chunk, number = [], number + 1
    if chunk:
        yield _line(f"{custom_id_prefix}{number}", chunk, model, lora_id, texts_per_line)


def _line(
    custom_id: str, texts: list[str], model: str, lora_id: str | None, texts_per_line: int
) -> str:
    body: dict[str, Any] = {"model": model, "input": texts if texts_per_line > 1 else texts[0]}
    if lora_id is not None:
        # A body field rather than "<base>:<lora>": the model stays a name the gateway serves,
        # with nothing to split.
        body["lora_id"] = lora_id
    line = {"custom_id": custom_id, "method": "POST", "url": ENDPOINT, "body": body}
    return _json.dumps(line).decode() + "\n"


def read_batch_output(source: Source) -> Iterator[tuple[str | None, Vectors | BatchLineError]]:
    """(custom_id, vectors or error) per line of an output or error file, read line by line
    so a large file is never all in memory. Vectors are float32 `[n_inputs, dims]` in input
    order, whether the batch wrote float lists or base64 (`encoding_format`). The custom id is
    None only for an error about an input line too broken to have one."""
    with _open(source) as lines:
        for number, raw in enumerate(lines):
            if not raw.strip():
                continue
            try:
                result = _result(_json.loads(raw))
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise ValueError(f"batch output line {number} is unreadable: {exc!r}") from exc
            yield result


def _result(record: dict[str, Any]) -> tuple[str | None, Vectors | BatchLineError]:
    custom_id = record["custom_id"]
    if custom_id is not None and not isinstance(custom_id, str):
        raise TypeError(f"custom_id is not a string: {custom_id!r:.200}")
    error = record.get("error")
    if error:
        return custom_id, BatchLineError(str(error.get("code")), str(error.get("message")))
    response = record["response"]
    body = response["body"]
    if response.get("status_code") != 200:
        failure = body.get("error") if isinstance(body, dict) else None
        failure = failure if isinstance(failure, dict) else {}
        code = str(failure.get("code") or f"HTTP_{response.get('status_code')}")
        return custom_id, BatchLineError(code, str(failure.get("message") or body))
    data = sorted(body["data"], key=lambda item: int(item["index"]))
    if not data:
        return custom_id, np.zeros((0, 0), dtype=np.float32)
    return custom_id, np.stack([_vector(item["embedding"]) for item in data])


def _vector(embedding: list[float] | str) -> Vectors:
    if isinstance(embedding, str):
        return np.frombuffer(base64.b64decode(embedding), dtype="<f4").astype(np.float32)
    return np.asarray(embedding, dtype=np.float32)


def load_npy_output(npy: Source, ids: Source) -> tuple[list[str], Vectors]:
    """The `npy` output format: custom ids (from the batch's ids file) and the float32 matrix,
    one row per input text, so a line with several inputs repeats its custom id."""
    vectors = np.load(io.BytesIO(npy) if isinstance(npy, bytes) else npy, allow_pickle=False)
    with _open(ids) as lines:
        custom_ids = [_custom_id(_json.loads(raw)) for raw in lines if raw.strip()]
    if len(custom_ids) != len(vectors):
        raise ValueError(f"{len(custom_ids)} custom ids for {len(vectors)} rows")
    return custom_ids, np.asarray(vectors, dtype=np.float32)


def _custom_id(value: object) -> str:
    """An ids-file line: the id as a JSON string, or an object that has it."""
    if isinstance(value, dict):
        value = value.get("custom_id")
    if not isinstance(value, str):
        raise ValueError(f"not a custom id: {value!r:.200}")
    return value


def load_parquet_output(source: Source) -> tuple[list[str], Vectors]:
    """The `parquet` output format, as `load_npy_output` returns npy: a row per input text
    with its `custom_id` and `embedding`. Needs pyarrow, which loraq-client leaves out: it is
    large, and only this format needs it."""
    try:
        import pyarrow.parquet as pq
    except ModuleNotFoundError as exc:
        raise ImportError(
            "reading parquet batch output needs pyarrow, which loraq-client does not install: "
            "pip install pyarrow (or ask for output_format='npy' or 'jsonl')"
        ) from exc
    table = pq.read_table(
        io.BytesIO(source) if isinstance(source, bytes) else source,
        columns=["custom_id", "embedding"],
    )
    custom_ids = [str(value) for value in table.column("custom_id").to_pylist()]
    if not custom_ids:
        return custom_ids, np.zeros((0, 0), dtype=np.float32)
    values = table.column("embedding").combine_chunks().flatten()
    flat = np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.float32)
    if flat.size % len(custom_ids):
        raise ValueError(f"{flat.size} values do not split into {len(custom_ids)} equal rows")
    return custom_ids, flat.reshape(len(custom_ids), -1)


def _open(source: Source) -> IO[bytes]:
    return io.BytesIO(source) if isinstance(source, bytes) else Path(source).open("rb")
