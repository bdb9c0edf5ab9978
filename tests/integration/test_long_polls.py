"""Waiting on the gateway (`api/waiter.py`, `common.redis_connection.async_client`): many long
polls at once share a bounded Redis pool, waiting for a connection instead of failing with "Too many
connections", and the sync route stops waiting at its timeout with a job id to poll."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import httpx
import redis.asyncio as aioredis

from api.submit import new_job_id
from common.job_store import AsyncJobStore
from common.schemas import JobStatus, StoredJob
from tests import sie
from tests.constants import FAKE_MODEL
from tests.integration.gateway_app import Keys, gateway, settings

POLLS = 300


def test_hundreds_of_long_polls_are_all_answered(redis_url: str, tmp_path: Path) -> None:
    api_keys = Keys()
    s = settings(redis_url, tmp_path, [api_keys.entry("acme")])
    headers = api_keys.headers("acme")

    async def scenario() -> list[httpx.Response]:
        finisher = aioredis.Redis.from_url(redis_url)
        store = AsyncJobStore(finisher, s.result_ttl_s)
        ids = [new_job_id() for _ in range(POLLS)]
        for job_id in ids:
            job = StoredJob(
                id=job_id, status=JobStatus.QUEUED, model=FAKE_MODEL, n_items=1,
                created_at=time.time(), tenant="acme",
            )  # fmt: skip
            await store.create(job, b"{}", "q")
        try:
            async with gateway(s) as (client, _):
                polls = [
                    asyncio.create_task(
                        client.get(f"/v1/jobs/{job_id}", params={"wait": 60}, headers=headers)
                    )
                    for job_id in ids
                ]
                for job_id in ids:  # some finish before their poll reads them, most while waited on
                    await store.cancel(job_id, time.time())
                return await asyncio.gather(*polls)
        finally:
            await finisher.aclose()

    answers = asyncio.run(scenario())
    assert Counter(a.status_code for a in answers) == {200: POLLS}, answers[0].text
    assert {a.json()["status"] for a in answers} == {"cancelled"}


def test_sync_timeout_gives_504_with_pollable_job_id(redis_url: str, tmp_path: Path) -> None:
    """No worker serves the model: the 1 s sync timeout ends the wait, not the job."""
    api_keys = Keys()
    s = settings(redis_url, tmp_path, [api_keys.entry("acme")], sync_timeout_s=1)
    headers = api_keys.headers("acme")

    async def scenario() -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        async with gateway(s) as (client, _):
            timed_out = await client.post(
                f"/v1/encode/{FAKE_MODEL}",
                content=sie.body(["x"]),
                headers={**sie.HEADERS, **headers},
            )
            job_id = timed_out.json()["error"]["job_id"]
            job = await client.get(f"/v1/jobs/{job_id}", headers=headers)
            return timed_out, job, await client.get("/readyz")

    timed_out, job, ready = asyncio.run(scenario())
    assert timed_out.status_code == 504
    assert timed_out.json()["error"]["code"] == "JOB_TIMEOUT"
    assert job.status_code == 200 and job.json()["status"] == "queued"
    assert ready.status_code == 503 and ready.json()["workers"][FAKE_MODEL] == 0
