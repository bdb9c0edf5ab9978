"""Admission on the gateway (`api/submit.py`, `api/checks.py`, `api/idempotency.py`): the costly
checks run only for admitted requests and cannot hold up others, an Idempotency-Key survives a
failed first attempt, and one tenant cannot fill a model's queue."""

from __future__ import annotations

import asyncio
import ipaddress
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import redis
from redis.exceptions import ConnectionError as RedisConnectionError

from api.checks import DNS_THREADS, SubmitChecks
from common import keys
from common.ssrf import IPAddress, Network, Target
from tests.constants import FAKE_MODEL
from tests.integration.gateway_app import Keys, code, gateway, job_body, settings

PUBLIC = ipaddress.ip_address("93.184.216.34")
HOOKED = {**job_body(), "webhook": {"url": "https://hooks.example.com/loraq"}}


async def until(condition: Callable[[], bool], timeout: float = 30) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def test_a_rate_limited_submit_costs_no_lookup_and_no_tokenizing(
    redis_url: str, tmp_path: Path
) -> None:
    api_keys = Keys()
    s = settings(redis_url, tmp_path, [api_keys.entry("slow", rate_per_s=0.01, burst=1)])
    looked_up: list[str] = []
    tokenized: list[str] = []

    def resolver(target: Target, allowed: list[Network]) -> IPAddress:
        looked_up.append(target.host)
        return PUBLIC

    def tokenizer(model: str) -> None:
        tokenized.append(model)

    body = {**HOOKED, "params": {"options": {"truncate": False}}}

    async def scenario() -> list[httpx.Response]:
        async with gateway(s) as (client, gw):
            gw.checks = SubmitChecks(s, resolver=resolver, tokenizer=tokenizer)
            try:
                return [
                    await client.post("/v1/jobs", json=body, headers=api_keys.headers("slow"))
                    for _ in range(2)
                ]
            finally:
                gw.checks.close()

    first, second = asyncio.run(scenario())
    assert first.status_code == 202, first.text
    assert code(second) == (429, "QUOTA_EXCEEDED")
    assert (looked_up, tokenized) == (["hooks.example.com"], [FAKE_MODEL])


def test_hanging_lookups_hold_up_no_other_request(redis_url: str, tmp_path: Path) -> None:
    """The DNS server never answers (until the test ends). With lookups on the thread pool every
    route's blocking work shares, and no deadline, the unrelated GET and the submits would wait
    for it forever; here the submits stop waiting and leave the host to the delivery."""
    api_keys = Keys()
    s = settings(redis_url, tmp_path, [api_keys.entry("acme")])
    headers = api_keys.headers("acme")
    ended = threading.Event()
    lookups: list[str] = []

    def hanging(target: Target, allowed: list[Network]) -> IPAddress:
        lookups.append(target.host)
        ended.wait(120)
        return PUBLIC

    async def scenario() -> tuple[httpx.Response, list[httpx.Response]]:
        async with gateway(s) as (client, gw):
            gw.checks = SubmitChecks(s, resolver=hanging)
            try:
                job = (await client.post("/v1/jobs", json=job_body(), headers=headers)).json()
                submits = [
                    asyncio.create_task(client.post("/v1/jobs", json=HOOKED, headers=headers))
                    for _ in range(60)
                ]
                await until(lambda: len(lookups) >= DNS_THREADS)
                poll = await asyncio.wait_for(
                    client.get(f"/v1/jobs/{job['id']}", headers=headers), 60
                )
                return poll, await asyncio.wait_for(asyncio.gather(*submits), 60)
            finally:
                ended.set()
                gw.checks.close()

    poll, submitted = asyncio.run(scenario())
    assert poll.json()["status"] == "queued"
    assert {r.status_code for r in submitted} == {202}, "unchecked hosts are left to delivery"


class FailsOnce:
    """Stands in for an async method: the first call raises `error`, later ones pass through."""

    def __init__(self, method: Callable[..., Any], error: Exception) -> None:
        self._method = method
        self._error: Exception | None = error

    async def __call__(self, *args: Any) -> Any:
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        return await self._method(*args)


def test_an_idempotency_key_survives_a_first_attempt_that_failed(
    redis_url: str, tmp_path: Path
) -> None:
    api_keys = Keys()
    s = settings(redis_url, tmp_path, [api_keys.entry("acme")])

    async def attempts(idem_key: str) -> list[httpx.Response]:
        headers = {**api_keys.headers("acme"), "idempotency-key": idem_key}
        async with gateway(s) as (client, gw):
            broken = RedisConnectionError("Too many connections")
            gw.store.create = FailsOnce(gw.store.create, broken)
            post = client.post
            return [await post("/v1/jobs", json=job_body(), headers=headers) for _ in range(3)]

    first, retry, again = asyncio.run(attempts("order-1"))
    assert code(first) == (503, "QUEUE_UNAVAILABLE")
    assert (retry.status_code, again.status_code) == (202, 200), retry.text
    assert retry.json()["id"] == again.json()["id"]


def test_one_tenant_cannot_fill_a_models_queue(redis_url: str, tmp_path: Path) -> None:
    api_keys = Keys()
    entries = [api_keys.entry("hog"), api_keys.entry("other")]
    s = settings(redis_url, tmp_path, entries, limits={"max_queued_jobs": 8, "tenant_share": 0.25})
    hog, other = api_keys.headers("hog"), api_keys.headers("other")

    async def scenario() -> dict[str, Any]:
        async with gateway(s) as (client, _):
            seen: dict[str, Any] = {}
            held = [await client.post("/v1/jobs", json=job_body(), headers=hog) for _ in "12"]
            seen["held"] = [r.status_code for r in held]
            seen["over"] = code(await client.post("/v1/jobs", json=job_body(), headers=hog))
            seen["other"] = (await client.post("/v1/jobs", json=job_body(), headers=other)).json()
            await client.delete(f"/v1/jobs/{held[0].json()['id']}", headers=hog)
            seen["freed"] = (await client.post("/v1/jobs", json=job_body(), headers=hog)).json()
            return seen

    seen = asyncio.run(scenario())
    assert seen["held"] == [202, 202]
    assert seen["over"] == (429, "QUOTA_EXCEEDED"), "8 x 0.25: two unfinished jobs per tenant"
    assert seen["other"]["status"] == "queued", "another tenant still gets in"
    assert seen["freed"]["status"] == "queued", "a finished job frees its place"
    counts = redis.Redis.from_url(redis_url).hgetall(keys.QUEUED_JOBS)
    assert counts == {b"hog/org-model": b"2", b"other/org-model": b"1"}
