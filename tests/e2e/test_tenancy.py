"""Tenants, quotas, cancel and the OpenAI-compatible endpoint where jobs must run: on a real
stack with auth on (keys mode), a tiny model, and batches held 1.5 s so jobs stay unfinished
long enough to cancel them and to fill a quota. Refusals the gateway makes alone (no key, the
submit rate, idempotency) are in tests/integration/test_gateway_tenancy.py."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import openai
import pytest

from api.auth import new_key
from loraq.stack import Stack, wait_until
from loraq.testing import save_random_adapter, save_tiny_model
from tests.constants import MODEL
from tests.e2e.tiny import tiny_stack

KEYS: dict[str, str] = {}


def key_entry(tenant: str, **limits: Any) -> dict[str, Any]:
    key, digest = new_key()
    KEYS[tenant] = key
    return {"tenant": tenant, "sha256": digest, **limits}


@pytest.fixture(scope="module")
def keyed_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("tenancy")
    model_dir = save_tiny_model(root / "model")  # tiny_stack finds it there
    for i, org in enumerate(["acme", "globex"]):
        save_random_adapter(
            model_dir, root / "adapters" / f"{org}/a0", MODEL, seed=i, r=2, lora_alpha=4,
            target_modules=["query", "value"],
        )  # fmt: skip
    keys = [
        key_entry("acme", lora_allow=["acme/*"]),
        key_entry("globex"),
        key_entry("smallfry", max_queued_items=3),
        key_entry("ops", admin=True),
    ]
    env = {
        "LORAQ_AUTH__KEYS": json.dumps(keys),
        "LORAQ_BATCH__MAX_WAIT_MS": "1500",
    }
    with tiny_stack(root, env) as stack:
        yield stack


def as_(tenant: str, stack: Stack) -> httpx.Client:
    headers = {"authorization": f"Bearer {KEYS[tenant]}"}
    return httpx.Client(base_url=stack.url, headers=headers, timeout=30)


def body(texts: int = 1, lora_id: str | None = None) -> dict[str, Any]:
    options = {"lora_id": lora_id} if lora_id else {}
    return {
        "model": MODEL,
        "items": [{"text": f"t{i}"} for i in range(texts)],
        "params": {"options": options},
    }


def code(response: httpx.Response) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]


def test_tenant_isolation(keyed_stack: Stack) -> None:
    with as_("acme", keyed_stack) as acme, as_("globex", keyed_stack) as globex:
        job_id = acme.post("/v1/jobs", json=body()).json()["id"]
        for method in ("GET", "DELETE"):
            assert code(globex.request(method, f"/v1/jobs/{job_id}")) == (404, "JOB_NOT_FOUND")
        done = acme.get(f"/v1/jobs/{job_id}", params={"wait": 30}).json()
        assert done["status"] == "succeeded" and "worker" not in done
        # The adapter allowlist of acme's key: only acme/* adapters, whether they exist or not.
        assert acme.post("/v1/jobs", json=body(lora_id="acme/a0")).status_code == 202
        for other in ("globex/a0", "globex/missing"):
            assert code(acme.post("/v1/jobs", json=body(lora_id=other))) == (
                403,
                "ADAPTER_FORBIDDEN",
            )
        assert globex.post("/v1/jobs", json=body(lora_id="globex/a0")).status_code == 202


def test_workers_view_shows_a_tenant_only_its_own_adapters(keyed_stack: Stack) -> None:
    with as_("globex", keyed_stack) as globex, as_("ops", keyed_stack) as ops:
        job_id = globex.post("/v1/jobs", json=body(lora_id="globex/a0")).json()["id"]
        assert globex.get(f"/v1/jobs/{job_id}", params={"wait": 30}).json()["status"] == "succeeded"
        wait_until(
            lambda: "globex/a0" in ops.get("/v1/workers").text,
            30,
            "the next heartbeat to show the adapter warm",
            interval=0.2,
        )
        assert ops.get("/v1/workers").json()["models"][MODEL]["workers"][0]["id"]
    with as_("acme", keyed_stack) as acme:
        view = acme.get("/v1/workers").json()["models"][MODEL]
    assert view["live_workers"] == 1 and "globex/a0" not in view["warm_adapters"]


def test_queued_items_quota(keyed_stack: Stack) -> None:
    with as_("smallfry", keyed_stack) as small:
        first = small.post("/v1/jobs", json=body(texts=2))
        assert first.status_code == 202
        over = small.post("/v1/jobs", json=body(texts=2))  # 2 + 2 > 3 while the first runs
        assert code(over) == (429, "QUOTA_EXCEEDED")
        assert (
            small.get(f"/v1/jobs/{first.json()['id']}", params={"wait": 30}).json()["status"]
            == "succeeded"
        )
        assert small.post("/v1/jobs", json=body(texts=2)).status_code == 202, (
            "finished jobs free it"
        )


def test_cancel(keyed_stack: Stack) -> None:
    with as_("globex", keyed_stack) as c:
        job_id = c.post("/v1/jobs", json=body()).json()["id"]
        cancelled = c.delete(f"/v1/jobs/{job_id}")
        assert cancelled.status_code == 200
        assert cancelled.json()["status"] == "cancelled"
        # A job submitted after it finishes after it (one worker): by then the cancelled job's
        # compute, if it had started, has ended too, and its result was discarded.
        later = c.post("/v1/jobs", json=body()).json()["id"]
        assert c.get(f"/v1/jobs/{later}", params={"wait": 30}).json()["status"] == "succeeded"
        final = c.get(f"/v1/jobs/{job_id}").json()
        assert (final["status"], final["result"]) == ("cancelled", None)
        assert code(c.delete(f"/v1/jobs/{job_id}")) == (409, "JOB_NOT_CANCELLABLE")


def openai_client(stack: Stack, tenant: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.url + "/v1", api_key=KEYS[tenant], max_retries=0)


def reference(stack: Stack, tenant: str, texts: list[str], lora_id: str | None) -> np.ndarray:
    with as_(tenant, stack) as c:
        options = {"lora_id": lora_id} if lora_id else {}
        job_id = c.post(
            "/v1/jobs",
            json={
                "model": MODEL,
                "items": [{"text": t} for t in texts],
                "params": {"options": options},
            },
        ).json()["id"]
        job = c.get(f"/v1/jobs/{job_id}", params={"wait": 30}).json()
    return np.array([item["dense"] for item in job["result"]["items"]], dtype=np.float32)


def test_openai_client(keyed_stack: Stack) -> None:
    texts = ["the quick brown fox", "jumps over the lazy dog"]
    client = openai_client(keyed_stack, "acme")
    base = client.embeddings.create(model=MODEL, input=texts)  # the client asks for base64
    got = np.array([d.embedding for d in base.data], dtype=np.float32)
    np.testing.assert_allclose(got, reference(keyed_stack, "acme", texts, None), atol=1e-6)
    assert [d.index for d in base.data] == [0, 1]
    assert base.usage.prompt_tokens > 0

    tuned = client.embeddings.create(model=f"{MODEL}:acme/a0", input=texts, encoding_format="float")
    via_extra = client.embeddings.create(
        model=MODEL, input=texts, extra_body={"lora_id": "acme/a0"}
    )
    want = reference(keyed_stack, "acme", texts, "acme/a0")
    np.testing.assert_allclose([d.embedding for d in tuned.data], want, atol=1e-6)
    np.testing.assert_allclose([d.embedding for d in via_extra.data], want, atol=1e-6)
    assert np.abs(want - got).max() > 1e-4, "the adapter changes the vectors"

    short = client.embeddings.create(model=MODEL, input="one text", dimensions=8)
    vector = np.array(short.data[0].embedding)
    assert vector.shape == (8,) and abs(np.linalg.norm(vector) - 1) < 1e-5

    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="no/such-model", input="x")
    with pytest.raises(openai.PermissionDeniedError):
        client.embeddings.create(model=f"{MODEL}:globex/a0", input="x")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(
            base_url=keyed_stack.url + "/v1", api_key="lq_nope", max_retries=0
        ).embeddings.create(model=MODEL, input="x")


def test_openai_base64_wire_format(keyed_stack: Stack) -> None:
    with as_("acme", keyed_stack) as c:
        raw = c.post(
            "/v1/embeddings", json={"model": MODEL, "input": "hi", "encoding_format": "base64"}
        ).json()
    vector = np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), dtype="<f4")
    assert raw["object"] == "list" and raw["data"][0]["object"] == "embedding"
    assert vector.shape == (32,)
    np.testing.assert_allclose(vector, reference(keyed_stack, "acme", ["hi"], None)[0], atol=1e-6)
