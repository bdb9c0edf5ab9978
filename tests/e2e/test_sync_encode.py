"""The synchronous SIE-wire endpoint, spoken with raw HTTP in both encodings, with a worker
answering; what the gateway answers alone is in tests/integration."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import msgpack
import msgpack_numpy
import numpy as np
import pytest

from tests import sie
from tests.constants import MODEL
from tests.e2e.helpers import dense, submit, wait_job

TEXTS = ["a contract for the sale of goods", "the patient presented with chest pain"]


@pytest.mark.parametrize("lora_id", [None, "org/qkv-r8"])
def test_msgpack_matches_async_job(client: httpx.Client, lora_id: str | None) -> None:
    response = client.post(
        f"/v1/encode/{MODEL}", content=sie.body(TEXTS, lora_id), headers=sie.HEADERS
    )
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


def test_failed_job_answers_with_its_code(client: httpx.Client, adapter_dir: Path) -> None:
    bad = adapter_dir / "org" / "not-lora"
    bad.mkdir(parents=True, exist_ok=True)
    (bad / "adapter_config.json").write_text(json.dumps({"peft_type": "IA3"}))
    (bad / "adapter_model.safetensors").write_bytes(b"")
    response = client.post(
        f"/v1/encode/{MODEL}", content=sie.body(TEXTS, "org/not-lora"), headers=sie.HEADERS
    )
    assert (response.status_code, response.json()["error"]["code"]) == (422, "ADAPTER_NOT_LORA")
