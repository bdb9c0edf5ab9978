"""The Batches API on a real Redis with API keys on and no worker (chunk jobs stay queued):
tenancy, the open-batch cap, bad bodies, and a cancel that answers every line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from api.main import create_app
from common.settings import BulkSettings
from loraq.stack import wait_until
from loraq_client import batch_lines
from tests.asgi_server import serve
from tests.constants import FAKE_MODEL
from tests.integration.gateway_app import Keys, code, settings

CAP = 2


@pytest.fixture(scope="module")
def served(
    private_redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Keys]]:
    root = tmp_path_factory.mktemp("batches")
    bulk = BulkSettings(
        store=str(root / "store"), max_open_batches_per_tenant=CAP, poll_s=0.05, chunk_items=4
    )
    api_keys = Keys()
    entries = [api_keys.entry(t, rate_per_s=1000, burst=1000) for t in ("acme", "globex", "capped")]
    with serve(create_app(settings(private_redis_url, root, entries, bulk=bulk))) as url:
        yield url, api_keys


def client_for(served: tuple[str, Keys], tenant: str) -> httpx.Client:
    url, api_keys = served
    return httpx.Client(base_url=url, headers=api_keys.headers(tenant), timeout=30)


def upload(client: httpx.Client, n: int) -> str:
    data = "".join(batch_lines((f"text {i}" for i in range(n)), FAKE_MODEL, None, "c")).encode()
    reply = client.post("/v1/files", files={"file": ("in.jsonl", data)}, data={"purpose": "batch"})
    assert reply.status_code == 200, reply.text
    file_id: str = reply.json()["id"]
    return file_id


def create(client: httpx.Client, file_id: str, **extra: Any) -> httpx.Response:
    body = {"input_file_id": file_id, "endpoint": "/v1/embeddings", "completion_window": "24h"}
    return client.post("/v1/batches", json={**body, **extra})


def test_a_tenant_sees_only_its_own_batches(served: tuple[str, Keys]) -> None:
    with client_for(served, "acme") as acme, client_for(served, "globex") as globex:
        file_id = upload(acme, 3)
        created = create(acme, file_id)
        assert created.status_code == 200, created.text
        batch_id = created.json()["id"]
        missing = globex.get("/v1/batches/batch_" + "0" * 24)
        for reply in (
            globex.get(f"/v1/batches/{batch_id}"),
            globex.post(f"/v1/batches/{batch_id}/cancel"),
            missing,
        ):
            assert code(reply) == (404, "BATCH_NOT_FOUND")
        assert reply.json()["error"]["message"].startswith("no batch")
        assert code(create(globex, file_id)) == (404, "FILE_NOT_FOUND")
        assert batch_id not in [b["id"] for b in globex.get("/v1/batches").json()["data"]]
        assert batch_id in [b["id"] for b in acme.get("/v1/batches").json()["data"]]
        assert acme.post(f"/v1/batches/{batch_id}/cancel").status_code == 200


def test_bad_bodies_get_clear_errors(served: tuple[str, Keys]) -> None:
    with client_for(served, "acme") as acme:
        file_id = upload(acme, 1)
        assert code(create(acme, file_id, endpoint="/v1/chat/completions")) == (
            422,
            "INVALID_INPUT",
        )
        assert code(create(acme, file_id, completion_window="1h")) == (422, "INVALID_INPUT")
        assert code(create(acme, file_id, output_format="csv")) == (422, "INVALID_INPUT")
        assert code(create(acme, "file-nope")) == (404, "FILE_NOT_FOUND")
        assert code(acme.get("/v1/batches", params={"limit": 0})) == (422, "INVALID_INPUT")
        assert code(acme.post("/v1/batches", content=b"{")) == (400, "INVALID_JSON")


def test_the_open_batch_cap_and_a_cancel_that_answers_every_line(
    served: tuple[str, Keys],
) -> None:
    with client_for(served, "capped") as capped:
        file_id = upload(capped, 10)
        first, second = (create(capped, file_id).json()["id"] for _ in range(CAP))
        assert code(create(capped, file_id)) == (429, "TOO_MANY_BATCHES")
        cancelling = capped.post(f"/v1/batches/{first}/cancel")
        assert cancelling.json()["status"] in ("cancelling", "cancelled")

        def ended(batch_id: str) -> bool:
            return bool(capped.get(f"/v1/batches/{batch_id}").json()["status"] == "cancelled")

        wait_until(lambda: ended(first), 30, "the cancel")
        final = capped.get(f"/v1/batches/{first}").json()
        assert final["request_counts"] == {"total": 10, "completed": 0, "failed": 10}
        assert final["output_file_id"] is None
        errors = capped.get(f"/v1/files/{final['error_file_id']}/content").content.splitlines()
        assert sorted(json.loads(e)["custom_id"] for e in errors) == sorted(
            f"c{i}" for i in range(10)
        )
        assert code(capped.post(f"/v1/batches/{first}/cancel")) == (409, "BATCH_NOT_CANCELLABLE")
        assert create(capped, file_id).status_code == 200, "a slot is free again"
        capped.post(f"/v1/batches/{second}/cancel")
