"""API keys on the gateway: a request needs a valid one, a tenant's submit rate and idempotency
keys are its own, and one key learns nothing about others: adapter allowlists answer alike for
adapters that exist and that do not, `/v1/workers` shows a key only its own adapters, and a job
view names no worker (`api/auth.py`, `api/idempotency.py`, `api/routes/workers.py`,
`common/job_view.py`)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import httpx
import redis

from common import keys
from common.heartbeats import write_heartbeat
from common.job_store import JobStore
from common.schemas import WorkerInfo
from tests.constants import FAKE_MODEL
from tests.integration.gateway_app import (
    Keys,
    add_adapter,
    code,
    gateway,
    job_body,
    settings,
)


def refusals(lora_id: str) -> list[tuple[str, dict[str, object]]]:
    """The same adapter asked for on every route that takes one."""
    job = job_body(lora_id=lora_id)
    return [
        ("/v1/jobs", job),
        (f"/v1/encode/{FAKE_MODEL}", {"items": job["items"], "params": job["params"]}),
        ("/v1/embeddings", {"model": f"{FAKE_MODEL}:{lora_id}", "input": "x"}),
    ]


def test_an_allowlist_answers_alike_whether_the_adapter_exists_or_not(
    redis_url: str, tmp_path: Path
) -> None:
    api_keys = Keys()
    s = settings(redis_url, tmp_path, [api_keys.entry("acme", lora_allow=["acme/*"])])
    add_adapter(tmp_path, "globex/a0")
    headers = api_keys.headers("acme")

    async def scenario() -> dict[str, list[httpx.Response]]:
        async with gateway(s) as (client, _):
            return {
                lora_id: [
                    await client.post(path, json=body, headers=headers)
                    for path, body in refusals(lora_id)
                ]
                for lora_id in ("globex/a0", "globex/missing", "acme/missing")
            }

    answers = asyncio.run(scenario())
    for existing, missing in zip(answers["globex/a0"], answers["globex/missing"], strict=True):
        assert code(existing) == code(missing) == (403, "ADAPTER_FORBIDDEN")
        text = existing.json()["error"]["message"].replace("globex/a0", "ID")
        assert text == missing.json()["error"]["message"].replace("globex/missing", "ID")
    assert [code(r) for r in answers["acme/missing"]] == [(404, "ADAPTER_NOT_FOUND")] * 3


def test_workers_view_shows_a_key_only_its_own_adapters(redis_url: str, tmp_path: Path) -> None:
    api_keys = Keys()
    entries = [
        api_keys.entry("ops", admin=True),
        api_keys.entry("acme", lora_allow=["acme/*"]),
        api_keys.entry("globex"),
    ]
    s = settings(redis_url, tmp_path, entries)
    now = time.time()
    worker = WorkerInfo(
        id="gpu-host-7-4242", model=FAKE_MODEL, queues=[keys.shard_queue(FAKE_MODEL, 0)],
        warm_adapters=["acme/a0", "initech/secret-project", f"globex/own@{'0' * 16}"],
        started_at=now, seen_at=now,
    )  # fmt: skip
    write_heartbeat(redis.Redis.from_url(redis_url), worker, heartbeat_s=60)

    async def scenario() -> dict[str, httpx.Response]:
        async with gateway(s) as (client, gw):
            await gw.cluster.refresh()
            return {
                tenant: await client.get("/v1/workers", headers=api_keys.headers(tenant))
                for tenant in ("ops", "acme", "globex")
            }

    views = asyncio.run(scenario())
    full = views["ops"].json()["models"][FAKE_MODEL]
    assert [w["id"] for w in full["workers"]] == [worker.id]
    assert full["workers"][0]["warm_adapters"] == worker.warm_adapters
    acme, globex = (views[t].json()["models"][FAKE_MODEL] for t in ("acme", "globex"))
    assert acme == {"queued": 0, "live_workers": 1, "warm_adapters": ["acme/a0"]}
    # A key without an allowlist owns its tenant's registry namespace, and nothing else.
    assert globex["warm_adapters"] == [f"globex/own@{'0' * 16}"]
    assert "globex/own" not in views["acme"].text
    for tenant in ("acme", "globex"):
        assert worker.id not in views[tenant].text
        assert "initech/secret-project" not in views[tenant].text


def test_a_job_view_names_its_worker_to_operators_only(redis_url: str, tmp_path: Path) -> None:
    api_keys = Keys()
    entries = [api_keys.entry("acme"), api_keys.entry("acme-ops", tenant="acme", admin=True)]
    s = settings(redis_url, tmp_path, entries)
    worker_store = JobStore(redis.Redis.from_url(redis_url), s.result_ttl_s)
    tenant, ops = api_keys.headers("acme"), api_keys.headers("acme-ops")

    async def scenario() -> tuple[httpx.Response, httpx.Response]:
        async with gateway(s) as (client, _):
            job_id = (await client.post("/v1/jobs", json=job_body(), headers=tenant)).json()["id"]
            worker_store.start(job_id, time.time(), "gpu-host-7-4242")
            return (
                await client.get(f"/v1/jobs/{job_id}", headers=tenant),
                await client.get(f"/v1/jobs/{job_id}", headers=ops),
            )

    tenant_view, ops_view = asyncio.run(scenario())
    assert tenant_view.json()["status"] == "running"
    assert "worker" not in tenant_view.json() and "gpu-host" not in tenant_view.text
    assert ops_view.json()["worker"] == "gpu-host-7-4242"


def test_keys_are_required(redis_url: str, tmp_path: Path) -> None:
    s = settings(redis_url, tmp_path, [Keys().entry("acme")])

    async def scenario() -> list[httpx.Response]:
        async with gateway(s) as (client, _):
            wrong = {"authorization": "Bearer lq_wrong"}
            return [
                await client.post("/v1/jobs", json=job_body()),
                await client.post("/v1/jobs", json=job_body(), headers=wrong),
                await client.get("/healthz"),
            ]

    anonymous, wrong, health = asyncio.run(scenario())
    assert code(anonymous) == code(wrong) == (401, "UNAUTHORIZED")
    assert health.status_code == 200


def test_submit_rate_quota(redis_url: str, tmp_path: Path) -> None:
    api_keys = Keys()
    s = settings(redis_url, tmp_path, [api_keys.entry("slowpoke", rate_per_s=0.2, burst=2)])
    headers = api_keys.headers("slowpoke")

    async def scenario() -> list[httpx.Response]:
        async with gateway(s) as (client, _):
            return [await client.post("/v1/jobs", json=job_body(), headers=headers) for _ in "123"]

    answers = asyncio.run(scenario())
    assert [a.status_code for a in answers] == [202, 202, 429]
    assert answers[2].json()["error"]["code"] == "QUOTA_EXCEEDED"
    assert int(answers[2].headers["retry-after"]) >= 1


def test_idempotency_keys_are_per_tenant(redis_url: str, tmp_path: Path) -> None:
    api_keys = Keys()
    s = settings(redis_url, tmp_path, [api_keys.entry("globex"), api_keys.entry("acme")])
    globex = api_keys.headers("globex")
    order = {"idempotency-key": "order-17"}

    async def scenario() -> dict[str, list[httpx.Response]]:
        async with gateway(s) as (client, _):

            async def post(texts: int, headers: dict[str, str]) -> httpx.Response:
                return await client.post("/v1/jobs", json=job_body(texts), headers=headers)

            burst = {**globex, "idempotency-key": "burst-1"}
            return {
                "globex": [await post(texts, {**globex, **order}) for texts in (2, 2, 3)],
                "burst": list(await asyncio.gather(*(post(1, burst) for _ in range(8)))),
                "acme": [await post(2, {**api_keys.headers("acme"), **order})],
            }

    answers = asyncio.run(scenario())
    first, again, other = answers["globex"]
    assert (first.status_code, again.status_code) == (202, 200)
    assert first.json()["id"] == again.json()["id"]
    assert code(other) == (422, "IDEMPOTENCY_KEY_REUSED")
    burst = answers["burst"]
    assert len({r.json()["id"] for r in burst}) == 1, "concurrent duplicates make one job"
    assert Counter(r.status_code for r in burst) == {202: 1, 200: 7}
    assert answers["acme"][0].status_code == 202, "keys are per tenant"
