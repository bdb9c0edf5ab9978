"""The control-plane benchmark's load: jobs over HTTP with a fixed number in flight, the Celery
floor's publisher, and the drain's completion counter.

Every request body is built before the clock starts, so the load generator's CPU is the HTTP
client's and the response parsing's; each response is checked (status, one vector per item), so
a run that measures errors fails instead of reporting them as throughput.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import msgpack
import orjson
import redis

from bench.control_plane_procs import Payload
from common import keys

#: async: POST /v1/jobs + long poll; encode: POST /v1/encode/{model} (SIE wire, msgpack);
#: embeddings: POST /v1/embeddings (OpenAI); submit: POST /v1/jobs only (the drain's fill).
MODES = ("async", "encode", "embeddings")
JSON = {"content-type": "application/json"}
MSGPACK = {"content-type": "application/msgpack", "accept": "application/msgpack"}
#: A job not finished by then means the stack is stuck: fail the run.
MAX_JOB_WAIT_S = 300


class BenchError(RuntimeError):
    pass


@dataclass(frozen=True)
class Call:
    path: str
    body: bytes
    headers: dict[str, str]
    items: int


@dataclass
class LoadResult:
    jobs: int
    wall_s: float
    requests: int
    latencies_ms: list[float]
    job_ids: list[str] = field(default_factory=list)


def build_calls(mode: str, payloads: Sequence[Payload], model: str) -> list[Call]:
    calls = []
    body: dict[str, Any]
    for lora_id, texts in payloads:
        items = [{"text": t} for t in texts]
        params = {"options": {"lora_id": lora_id} if lora_id else {}}
        if mode in ("async", "submit"):
            body = {"model": model, "items": items, "params": params}
            calls.append(Call("/v1/jobs", orjson.dumps(body), JSON, len(texts)))
        elif mode == "encode":
            packed = msgpack.packb({"items": items, "params": params}, use_bin_type=True)
            calls.append(Call(f"/v1/encode/{model}", packed, MSGPACK, len(texts)))
        elif mode == "embeddings":
            body = {"model": model, "input": texts, "lora_id": lora_id}
            calls.append(Call("/v1/embeddings", orjson.dumps(body), JSON, len(texts)))
        else:
            raise ValueError(f"unknown mode {mode!r}")
    return calls


def _check(reply: httpx.Response, ok: int) -> None:
    if reply.status_code != ok:
        raise BenchError(f"{reply.request.url.path}: HTTP {reply.status_code} {reply.text[:300]}")


def _count_items(mode: str, reply: httpx.Response) -> int:
    if mode == "encode":
        return len(msgpack.unpackb(reply.content, raw=False)["items"])
    if mode == "embeddings":
        return len(orjson.loads(reply.content)["data"])
    job = orjson.loads(reply.content)
    if job["status"] != "succeeded":
        raise BenchError(f"job {job['id']} {job['status']}: {job['error']}")
    return len(job["result"]["items"])


async def _long_poll(client: httpx.AsyncClient, job_id: str, wait_s: float) -> tuple[Any, int]:
    polls = 0
    while polls * wait_s < MAX_JOB_WAIT_S:
        reply = await client.get(f"/v1/jobs/{job_id}", params={"wait": wait_s})
        polls += 1
        _check(reply, 200)
        if orjson.loads(reply.content)["status"] not in ("queued", "running"):
            return reply, polls
    raise BenchError(f"job {job_id} not finished after {MAX_JOB_WAIT_S}s (is the worker alive?)")


async def _one(client: httpx.AsyncClient, mode: str, call: Call, wait_s: float) -> tuple[str, int]:
    """One job; returns its id (async modes) and how many HTTP requests it took."""
    reply = await client.post(call.path, content=call.body, headers=call.headers)
    _check(reply, 202 if mode in ("async", "submit") else 200)
    if mode == "submit":
        return str(orjson.loads(reply.content)["id"]), 1
    job_id, requests = "", 1
    if mode == "async":
        job_id = str(orjson.loads(reply.content)["id"])
        reply, polls = await _long_poll(client, job_id, wait_s)
        requests += polls
    if (got := _count_items(mode, reply)) != call.items:
        raise BenchError(f"{call.path}: {got} vectors for {call.items} items")
    return job_id, requests


async def _run(
    url: str, mode: str, calls: Sequence[Call], concurrency: int, wait_s: float
) -> LoadResult:
    pending = iter(enumerate(calls))
    latencies = [0.0] * len(calls)
    ids = [""] * len(calls)
    requests = 0

    async def lane() -> None:
        """One connection of its own: httpx's pool scans every connection per request, which
        with 64 connections in one pool costs the load generator more CPU than the gateway.
        Plain HTTP, so no TLS context (loading the CA bundle costs ~50 ms of CPU per client)."""
        nonlocal requests
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        async with httpx.AsyncClient(
            base_url=url, timeout=300, limits=limits, verify=False
        ) as client:
            for i, call in pending:
                started = time.perf_counter()
                ids[i], n = await _one(client, mode, call, wait_s)
                latencies[i] = (time.perf_counter() - started) * 1000
                requests += n

    started = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(min(concurrency, len(calls)))))
    return LoadResult(len(calls), time.perf_counter() - started, requests, latencies, ids)


def run_load(
    url: str, mode: str, calls: Sequence[Call], concurrency: int, wait_s: float = 30
) -> LoadResult:
    """Every call, `concurrency` at a time (each lane: one job after the other)."""
    return asyncio.run(_run(url, mode, calls, concurrency, wait_s))


def run_floor(
    send: Callable[[], None], done: Callable[[], int], tasks: int, window: int, idle_s: float = 60
) -> float:
    """Publish `tasks` no-op tasks keeping `window` unfinished; seconds until all are done."""
    published = finished = 0
    started = last_progress = time.perf_counter()
    while finished < tasks:
        while published < tasks and published - finished < window:
            send()
            published += 1
        time.sleep(0.002)
        now_done = done()
        if now_done > finished:
            finished, last_progress = now_done, time.perf_counter()
        elif time.perf_counter() - last_progress > idle_s:
            raise BenchError(f"the no-op worker stalled at {finished}/{tasks} tasks")
    return time.perf_counter() - started


class CompletionCounter:
    """Counts terminal transitions of given jobs on the job store's channel; subscribe before
    starting the worker, so no completion is missed."""

    def __init__(self, redis_url: str, job_ids: Sequence[str]) -> None:
        self._client = redis.Redis.from_url(redis_url)
        self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        self._pubsub.subscribe(keys.JOB_DONE_CHANNEL)
        self._waiting = set(job_ids)
        self.done = 0

    def wait_all(
        self, on_done: Callable[[int], None], check: Callable[[], None], idle_s: float = 120
    ) -> None:
        """Until every job is done; `on_done(count)` after each completion, `check()` (which
        raises if the worker died) each idle second."""
        last_progress = time.perf_counter()
        while self._waiting:
            message = self._pubsub.get_message(timeout=1.0)
            if message is None:
                check()
                if time.perf_counter() - last_progress > idle_s:
                    raise BenchError(f"no completion for {idle_s:g}s; {self.done} done")
                continue
            job_id = message["data"].decode()
            if job_id in self._waiting:
                self._waiting.discard(job_id)
                self.done += 1
                last_progress = time.perf_counter()
                on_done(self.done)

    def close(self) -> None:
        self._pubsub.close()
        self._client.close()
