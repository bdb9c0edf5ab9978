"""Many long polls at once on one gateway (`api/waiter.py`, `api/state.connect_redis`): they share
a bounded Redis pool, waiting for a connection instead of failing with "Too many connections"."""

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
