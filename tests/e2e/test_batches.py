"""Bulk embedding through the official `openai` client against the real stack: files in,
batches run as chunk jobs over base and adapters, files out, compared with `/v1/embeddings`."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from openai import OpenAI

from loraq.stack import Stack, wait_until
from tests.constants import MODEL

ADAPTERS = ["org/qv-r4", "org/qkv-r8", None]


@pytest.fixture
def openai_client(stack: Stack) -> Iterator[OpenAI]:
    with OpenAI(base_url=stack.url + "/v1", api_key="unused", max_retries=0) as client:
        yield client


def line(
    custom_id: str, inputs: str | list[str], lora_id: str | None, **body: Any
) -> dict[str, Any]:
    model = MODEL if lora_id is None else f"{MODEL}:{lora_id}"
    return {
        "custom_id": custom_id, "method": "POST", "url": "/v1/embeddings",
        "body": {"model": model, "input": inputs, **body},
    }  # fmt: skip


def corpus(n: int) -> list[dict[str, Any]]:
    return [
        line(f"doc-{i}", f"document number {i} about topic {i % 7}", ADAPTERS[i % 3])
        for i in range(n)
    ]


def jsonl(lines: list[dict[str, Any]] | list[str]) -> bytes:
    return b"".join((json.dumps(x) if isinstance(x, dict) else x).encode() + b"\n" for x in lines)


def run(client: OpenAI, data: bytes, timeout: float = 180, **extra: Any) -> Any:
    upload = client.files.create(file=("in.jsonl", io.BytesIO(data)), purpose="batch")
    batch = client.batches.create(
        input_file_id=upload.id, endpoint="/v1/embeddings", completion_window="24h",
        extra_body=extra or None,
    )  # fmt: skip
    assert batch.status == "validating"
    final: dict[str, Any] = {}

    def ended() -> bool:
        nonlocal final
        final = client.batches.retrieve(batch.id).model_dump()
        return final["status"] in ("completed", "failed", "expired", "cancelled")

    wait_until(ended, timeout, f"batch {batch.id} to end", interval=0.2)
    return final


def reference(client: httpx.Client, inputs: list[str], lora_id: str | None) -> np.ndarray:
    body: dict[str, Any] = {"model": MODEL, "input": inputs}
    if lora_id is not None:
        body["lora_id"] = lora_id
    reply = client.post("/v1/embeddings", json=body)
    assert reply.status_code == 200, reply.text
    return np.array([d["embedding"] for d in reply.json()["data"]], dtype=np.float32)


def test_a_batch_over_base_and_adapters_matches_the_embeddings_route(
    openai_client: OpenAI, client: httpx.Client
) -> None:
    lines = corpus(30)
    lines.append(line("two", ["first of two", "second of two"], "org/qkv-r8"))
    lines.append(line("short-b64", "shortened and base64", None, dimensions=64,
                      encoding_format="base64"))  # fmt: skip
    bad = ['{"custom_id": "broken", "method": "POST"', json.dumps(line("nomodel", "x", None) | {
        "body": {"model": "no/such-model", "input": "x"}})]  # fmt: skip
    final = run(openai_client, jsonl(lines) + jsonl(bad))
    assert final["status"] == "completed", final
    counts = final["request_counts"]
    assert counts == {"total": len(lines) + 2, "completed": len(lines), "failed": 2}
    for stamp in ("in_progress_at", "finalizing_at", "completed_at"):
        assert final[stamp] >= final["created_at"]

    output = [
        json.loads(x)
        for x in openai_client.files.content(final["output_file_id"]).read().splitlines()
    ]
    by_id = {o["custom_id"]: o for o in output}
    assert sorted(by_id) == sorted(x["custom_id"] for x in lines)
    for spec in lines[:6] + lines[-2:-1]:
        body = spec["body"]
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        lora = body["model"].split(":", 1)[1] if ":" in body["model"] else None
        got = by_id[spec["custom_id"]]["response"]["body"]["data"]
        vectors = np.array([d["embedding"] for d in got], dtype=np.float32)
        np.testing.assert_allclose(vectors, reference(client, inputs, lora), atol=2e-5)
        assert by_id[spec["custom_id"]]["response"]["status_code"] == 200
    short = by_id["short-b64"]["response"]["body"]["data"][0]["embedding"]
    decoded = np.frombuffer(base64.b64decode(short), dtype="<f4")
    assert decoded.shape == (64,) and abs(np.linalg.norm(decoded) - 1) < 1e-5

    errors = [
        json.loads(x)
        for x in openai_client.files.content(final["error_file_id"]).read().splitlines()
    ]
    assert {e["custom_id"] for e in errors} == {None, "nomodel"}
    codes = {e["custom_id"]: e["error"]["code"] for e in errors}
    assert codes == {None: "INVALID_JSON", "nomodel": "MODEL_NOT_FOUND"}


def test_columnar_outputs_hold_the_same_vectors(openai_client: OpenAI) -> None:
    """Three batches of the same lines (each batched its own way, so equal to float noise)."""
    lines = corpus(12)
    lines.append(line("pair", ["a", "b"], None))
    as_jsonl = run(openai_client, jsonl(lines))
    as_npy = run(openai_client, jsonl(lines), output_format="npy")
    as_parquet = run(openai_client, jsonl(lines), output_format="parquet")
    for final in (as_jsonl, as_npy, as_parquet):
        assert final["status"] == "completed", final
    want: dict[tuple[str, int], np.ndarray] = {}
    for raw in openai_client.files.content(as_jsonl["output_file_id"]).read().splitlines():
        out = json.loads(raw)
        for d in out["response"]["body"]["data"]:
            want[out["custom_id"], d["index"]] = np.array(d["embedding"], dtype=np.float32)

    matrix = np.load(io.BytesIO(openai_client.files.content(as_npy["output_file_id"]).read()))
    ids = [
        json.loads(x)
        for x in openai_client.files.content(as_npy["ids_file_id"]).read().splitlines()
    ]
    assert matrix.shape == (len(want), 384) and matrix.dtype == np.float32
    for row, meta in zip(matrix, ids, strict=True):
        np.testing.assert_allclose(row, want[meta["custom_id"], meta["index"]], atol=2e-5)

    import pyarrow.parquet as pq

    table = pq.read_table(
        io.BytesIO(openai_client.files.content(as_parquet["output_file_id"]).read())
    )
    assert table.num_rows == len(want)
    for custom_id, index, vector in zip(
        table["custom_id"].to_pylist(), table["index"].to_pylist(),
        table["embedding"].to_numpy(zero_copy_only=False), strict=True,
    ):  # fmt: skip
        np.testing.assert_allclose(
            np.asarray(vector, np.float32), want[custom_id, index], atol=2e-5
        )


def test_a_file_that_is_not_jsonl_fails_the_batch(openai_client: OpenAI) -> None:
    final = run(openai_client, b"this is a plain text file\nwith two lines\n")
    assert final["status"] == "failed"
    assert final["errors"]["data"][0]["code"] == "INVALID_FILE"
    assert final["output_file_id"] is None


def test_cancel_keeps_what_is_done_and_answers_every_line_once(
    openai_client: OpenAI, stack: Stack
) -> None:
    lines = corpus(3000)
    upload = openai_client.files.create(
        file=("big.jsonl", io.BytesIO(jsonl(lines))), purpose="batch"
    )
    batch = openai_client.batches.create(
        input_file_id=upload.id, endpoint="/v1/embeddings", completion_window="24h"
    )
    wait_until(
        lambda: openai_client.batches.retrieve(batch.id).request_counts.completed > 0,
        120, "some lines to be done",
    )  # fmt: skip
    cancelled = openai_client.batches.cancel(batch.id)
    assert cancelled.status in ("cancelling", "cancelled")
    wait_until(
        lambda: openai_client.batches.retrieve(batch.id).status == "cancelled", 120, "the cancel"
    )
    final = openai_client.batches.retrieve(batch.id)
    done = [
        json.loads(x)["custom_id"]
        for x in openai_client.files.content(final.output_file_id).read().splitlines()
    ]
    errors = [
        json.loads(x) for x in openai_client.files.content(final.error_file_id).read().splitlines()
    ]
    assert {e["error"]["code"] for e in errors} == {"BATCH_CANCELLED"}
    answered = done + [e["custom_id"] for e in errors]
    assert sorted(answered) == sorted(x["custom_id"] for x in lines)  # each exactly once
    assert final.request_counts.completed == len(done) > 0
    assert final.request_counts.failed == len(errors) > 0


def test_list_pages_newest_first(openai_client: OpenAI) -> None:
    made = [run(openai_client, jsonl(corpus(2)))["id"] for _ in range(3)]
    first = openai_client.batches.list(limit=2)
    assert [b.id for b in first.data] == made[::-1][:2]
    assert first.has_more
    second = openai_client.batches.list(limit=2, after=first.data[-1].id)
    assert second.data[0].id == made[0]
    ids = [b.id for b in openai_client.batches.list(limit=2)]  # the client pages through
    assert set(made) <= set(ids)
