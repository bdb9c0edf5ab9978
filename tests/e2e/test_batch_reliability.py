"""Nothing lost, nothing twice: a batch whose worker is SIGKILLed and whose gateway is SIGKILLed
and replaced mid-run still completes with every line answered exactly once; a batch past its
window ends `expired` with what is done; tenants see only their own batches."""

from __future__ import annotations

import io
import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from loraq.stack import LOCAL_DEV_ENV, Stack, wait_until
from loraq_client import batch_lines
from tests.constants import MODEL
from tests.e2e.tiny import tiny_stack

FAST = {
    **LOCAL_DEV_ENV,
    "LORAQ_VISIBILITY_TIMEOUT_S": "8",
    "LORAQ_WORKER__HEARTBEAT_S": "0.5",
    "LORAQ_ROUTING__LEASE_TTL_S": "2",
    "LORAQ_ROUTING__REFRESH_S": "0.2",
    "LORAQ_ROUTING__REDELIVER_AFTER_S": "10",
    "LORAQ_ROUTING__SWEEP_S": "1",
    "LORAQ_BULK__CHUNK_ITEMS": "40",
    "LORAQ_BULK__CHUNKS_IN_FLIGHT": "3",
    "LORAQ_BULK__LEASE_TTL_S": "2",
}


def lines(n: int) -> bytes:
    texts = (f"text number {i} " * (1 + i % 5) for i in range(n))
    return "".join(batch_lines(texts, MODEL)).encode()


def start_batch(client: httpx.Client, n: int) -> str:
    upload = client.post("/v1/files", files={"file": ("in.jsonl", io.BytesIO(lines(n)))},
                         data={"purpose": "batch"})  # fmt: skip
    assert upload.status_code == 200, upload.text
    created = client.post("/v1/batches", json={
        "input_file_id": upload.json()["id"], "endpoint": "/v1/embeddings",
        "completion_window": "24h",
    })  # fmt: skip
    assert created.status_code == 200, created.text
    batch_id: str = created.json()["id"]
    return batch_id


def batch(client: httpx.Client, batch_id: str) -> dict[str, Any]:
    data: dict[str, Any] = client.get(f"/v1/batches/{batch_id}").json()
    return data


def answered(client: httpx.Client, final: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    """Custom ids of the output lines, and the error lines."""

    def read(file_id: str | None) -> list[dict[str, Any]]:
        if file_id is None:
            return []
        content = client.get(f"/v1/files/{file_id}/content")
        assert content.status_code == 200
        return [json.loads(x) for x in content.content.splitlines()]

    return [o["custom_id"] for o in read(final["output_file_id"])], read(final["error_file_id"])


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    with tiny_stack(tmp_path, FAST, workers=2) as running:
        yield running


@pytest.mark.chaos
def test_worker_and_gateway_killed_mid_batch_every_line_once(stack: Stack) -> None:
    n = 3000
    with httpx.Client(base_url=stack.url, timeout=30) as client:
        batch_id = start_batch(client, n)
        wait_until(lambda: batch(client, batch_id)["request_counts"]["completed"] > 200, 120,
                   "the batch to be under way")  # fmt: skip
        victim = stack.workers[0]
        victim.signal(signal.SIGKILL)
        victim.popen.wait(10)
        stack.start_worker()
        assert stack.gateway is not None
        stack.gateway.signal(signal.SIGKILL)
        stack.gateway.popen.wait(10)
    stack.start_gateway()  # another gateway takes the batch's lease once it lapses
    with httpx.Client(base_url=stack.url, timeout=30) as client:
        wait_until(lambda: batch(client, batch_id)["status"] == "completed", 240,
                   "the batch to complete after the kills")  # fmt: skip
        final = batch(client, batch_id)
        done, errors = answered(client, final)
    assert errors == []
    assert sorted(done) == sorted(f"line-{i}" for i in range(n)), "every line exactly once"
    assert final["request_counts"] == {"total": n, "completed": n, "failed": 0}


def test_a_batch_past_its_window_expires_with_what_is_done(tmp_path: Path) -> None:
    env = {**FAST, "LORAQ_BULK__WINDOW_S": "3", "LORAQ_BULK__CHUNKS_IN_FLIGHT": "1",
           "LORAQ_BULK__CHUNK_ITEMS": "8"}  # fmt: skip
    n = 4000
    with (
        tiny_stack(tmp_path, env) as running,
        httpx.Client(base_url=running.url, timeout=30) as client,
    ):
        batch_id = start_batch(client, n)
        wait_until(lambda: batch(client, batch_id)["status"] == "expired", 60, "the window to pass")
        final = batch(client, batch_id)
        done, errors = answered(client, final)
    assert final["expired_at"] >= final["expires_at"]
    assert {e["error"]["code"] for e in errors} == {"BATCH_EXPIRED"}
    assert 0 < len(done) < n
    every = done + [e["custom_id"] for e in errors]
    assert sorted(every) == sorted(f"line-{i}" for i in range(n)), "every line exactly once"
    assert final["request_counts"] == {"total": n, "completed": len(done), "failed": len(errors)}
