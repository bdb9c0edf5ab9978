"""First use of many new adapters at once, mixed with base traffic: the failure peers have
(hung requests, weights swapped mid-batch) must not happen here."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import redis

from common import keys
from common.schemas import WorkerInfo
from loraq.stack import Stack, wait_until
from loraq.testing import save_random_adapter
from tests.constants import MODEL
from tests.e2e.helpers import dense, submit, wait_job
from tests.reference import peft_embeddings

TEXTS = ["the first of two texts", "and a second, longer one to vary lengths in the batch"]


def worker_infos(redis_url: str) -> list[WorkerInfo]:
    client = redis.Redis.from_url(redis_url)
    ids = [i.decode() for i in client.zrange(keys.WORKERS_ZSET, 0, -1)]
    records = [client.get(keys.worker(i)) for i in ids]
    return [WorkerInfo.model_validate(json.loads(r)) for r in records if r]


def total_loads(redis_url: str) -> int:
    return sum(info.adapter_loads for info in worker_infos(redis_url))


def acquires(redis_url: str) -> int:
    return sum(info.adapter_hits + info.adapter_misses for info in worker_infos(redis_url))


def test_ten_new_adapters_at_once(
    stack: Stack, client: httpx.Client, model_dir: Path, adapter_dir: Path, redis_server: str
) -> None:
    new = [f"race/a{i}" for i in range(10)]
    for i, lora_id in enumerate(new):
        save_random_adapter(
            model_dir, adapter_dir / lora_id, MODEL, seed=100 + i, r=4 + i, lora_alpha=8,
            target_modules=["query", "value"],
        )  # fmt: skip
    loads_before = total_loads(redis_server)
    acquires_before = acquires(redis_server)

    plan = [lid for lid in new for _ in range(3)] + [None] * 10  # 3 jobs per adapter + base
    with ThreadPoolExecutor(max_workers=len(plan)) as pool:
        jobs = list(
            pool.map(
                lambda lid: (
                    lid,
                    submit(client, MODEL, TEXTS, **({"lora_id": lid} if lid else {})),
                ),
                plan,
            )
        )
    started = time.monotonic()
    results = [(lid, wait_job(client, job_id, timeout=120)) for lid, job_id in jobs]
    assert time.monotonic() - started < 120, "no job may hang"
    assert all(job["status"] == "succeeded" for _, job in results), [j["error"] for _, j in results]

    references = {
        lid: peft_embeddings(model_dir, adapter_dir / lid if lid else None, TEXTS)
        for lid in [*new, None]
    }
    hashes: dict[str, set[str]] = {}
    for lid, job in results:
        assert np.abs(dense(job) - references[lid]).max() <= 1e-4, (
            f"rows of {lid} got other weights"
        )
        if lid:
            hashes.setdefault(lid, set()).add(job["adapter_hash"])
    assert all(len(h) == 1 for h in hashes.values())
    assert len({next(iter(h)) for h in hashes.values()}) == len(new), "each adapter its own hash"

    # The heartbeat shows 30 adapter acquisitions, and each adapter read from disk exactly once.
    expected = sum(1 for lid in plan if lid)
    wait_until(lambda: acquires(redis_server) - acquires_before >= expected, 20, "heartbeat")
    assert total_loads(redis_server) - loads_before == len(new)
