"""What the durability contract costs per submit: the job-creating write with and without `WAIT`
for one replica (`LORAQ_REDIS_REPLICA_ACKS=1`), against a real primary, replica and three
Sentinels on this machine, through the gateway's own client and job store.

Both modes run in the same process, interleaved round by round so drift hits both alike:
sequential creates (latency: what one submit waits), concurrent creates (throughput of one
gateway process's event loop), the gateway process's CPU per create and the primary's
(`INFO cpu`). The rest of a submit (HTTP, validation, tokenizing) is the same in both modes and
not measured here. Then, with two replicas, the primary is SIGKILLed under a stream of acked
creates: how long until one is accepted again (the surviving replica acks at once; with one
replica the first ack waits for a node to come back, see tests/e2e/test_sentinel_failover.py).
`python bench/sentinel.py` prints JSON and writes bench/results/sentinel.json.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.results_file import publish
from common.errors import QueueUnavailable
from common.job_store import AsyncJobStore
from common.redis_connection import async_client
from common.schemas import JobStatus, StoredJob
from common.settings import SentinelSettings, Settings
from loraq.stack import SentinelRedis, start_sentinel_redis

RESULTS = Path(__file__).resolve().parent / "results" / "sentinel.json"
#: About the queue message of an 8-text job.
MESSAGE = b'{"texts": [' + b", ".join([b'"' + b"x" * 100 + b'"'] * 8) + b"]}"


def settings_for(group: SentinelRedis) -> Settings:
    addresses = [f"127.0.0.1:{port}" for port in group.sentinels]
    return Settings(
        redis_url="redis://127.0.0.1/0",
        sentinel=SentinelSettings(addresses=addresses, master_name=group.master_name),
    )


def new_job() -> StoredJob:
    return StoredJob(
        id="job_" + secrets.token_urlsafe(16),
        status=JobStatus.QUEUED,
        model="m/1",
        n_items=8,
        created_at=time.time(),
    )


def redis_cpu_s(primary: redis.Redis) -> float:
    info = primary.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def one_round(
    store: AsyncJobStore, primary: redis.Redis, sequential: int, concurrent: int, tasks: int
) -> dict[str, Any]:
    latencies = []
    cpu0, redis0 = time.process_time(), redis_cpu_s(primary)
    for _ in range(sequential):
        started = time.perf_counter()
        await store.create(new_job(), MESSAGE, "jobs.m")
        latencies.append(time.perf_counter() - started)
    cpu1, redis1 = time.process_time(), redis_cpu_s(primary)

    async def creator(n: int) -> None:
        for _ in range(n):
            await store.create(new_job(), MESSAGE, "jobs.m")

    started = time.perf_counter()
    await asyncio.gather(*(creator(concurrent // tasks) for _ in range(tasks)))
    wall = time.perf_counter() - started
    return {
        "latencies": latencies,
        "client_cpu_s": cpu1 - cpu0,
        "redis_cpu_s": redis1 - redis0,
        "concurrent_per_s": (concurrent // tasks * tasks) / wall,
    }


async def run(group: SentinelRedis, args: argparse.Namespace) -> dict[str, Any]:
    settings = settings_for(group)
    client = async_client(settings)
    stores = {
        acks: AsyncJobStore(client, 600, replica_acks=acks, ack_timeout_ms=1000) for acks in (0, 1)
    }
    port = group.primary_port()
    assert port is not None
    primary = redis.Redis(port=port)
    rounds: dict[int, list[dict[str, Any]]] = {0: [], 1: []}
    try:
        for acks in (0, 1):  # warm-up: connections, script cache
            await one_round(stores[acks], primary, 50, 50, 5)
        for _ in range(args.rounds):
            for acks in (0, 1):
                primary.flushall()
                rounds[acks].append(
                    await one_round(
                        stores[acks], primary, args.sequential, args.concurrent, args.tasks
                    )
                )
    finally:
        await client.aclose()
    modes = {}
    for acks, done in rounds.items():
        latencies = np.array([x for r in done for x in r["latencies"]]) * 1000
        n = len(latencies)
        modes[f"replica_acks_{acks}"] = {
            "p50_ms": round(float(np.percentile(latencies, 50)), 3),
            "p99_ms": round(float(np.percentile(latencies, 99)), 3),
            "mean_ms": round(float(latencies.mean()), 3),
            "gateway_cpu_us_per_submit": round(sum(r["client_cpu_s"] for r in done) / n * 1e6, 1),
            "redis_cpu_us_per_submit": round(sum(r["redis_cpu_s"] for r in done) / n * 1e6, 1),
            "concurrent_submits_per_s": round(
                float(np.median([r["concurrent_per_s"] for r in done])), 1
            ),
        }
    off, on = modes["replica_acks_0"], modes["replica_acks_1"]
    return {
        "bench": "sentinel",
        "what": "AsyncJobStore.create through the Sentinel-aware gateway client, 1 replica",
        "rounds": args.rounds,
        "sequential_per_round": args.sequential,
        "concurrent_per_round": args.concurrent,
        "concurrent_tasks": args.tasks,
        **modes,
        "wait_cost": {
            "p50_ms": round(on["p50_ms"] - off["p50_ms"], 3),
            "p99_ms": round(on["p99_ms"] - off["p99_ms"], 3),
            "gateway_cpu_us_per_submit": round(
                on["gateway_cpu_us_per_submit"] - off["gateway_cpu_us_per_submit"], 1
            ),
            "redis_cpu_us_per_submit": round(
                on["redis_cpu_us_per_submit"] - off["redis_cpu_us_per_submit"], 1
            ),
            "concurrent_throughput_ratio": round(
                on["concurrent_submits_per_s"] / off["concurrent_submits_per_s"], 3
            ),
        },
    }


async def failover_gap(group: SentinelRedis, deadline_s: float = 60) -> dict[str, Any]:
    """Seconds from SIGKILL of the primary to the Sentinels' promotion and to the first create
    acked by a replica, creating one job after another (each failure retried at once)."""
    client = async_client(settings_for(group))
    store = AsyncJobStore(client, 600, replica_acks=1, ack_timeout_ms=500)
    old = group.primary_port()
    assert old is not None
    try:
        for _ in range(20):
            await store.create(new_job(), MESSAGE, "jobs.m")
        killed_at = time.perf_counter()
        group.nodes[old].popen.send_signal(signal.SIGKILL)
        failures = 0
        while True:
            try:
                await store.create(new_job(), MESSAGE, "jobs.m")
                break
            except (redis.RedisError, QueueUnavailable):
                failures += 1
                if time.perf_counter() - killed_at > deadline_s:
                    raise
        accepted_s = time.perf_counter() - killed_at
        promoted = group.primary_port()
    finally:
        await client.aclose()
    return {
        "first_acked_submit_s": round(accepted_s, 2),
        "failed_attempts": failures,
        "promoted": promoted not in (None, old),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sequential", type=int, default=400)
    parser.add_argument("--concurrent", type=int, default=2000)
    parser.add_argument("--tasks", type=int, default=50)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="loraq-sentinel-bench-") as work:
        group = start_sentinel_redis(Path(work) / "cost")
        try:
            result = asyncio.run(run(group, args))
        finally:
            group.stop()
        group = start_sentinel_redis(Path(work) / "failover", replicas=2)
        try:
            result["failover_two_replicas"] = asyncio.run(failover_gap(group))
        finally:
            group.stop()
    publish(result, None if args.no_write else RESULTS)


if __name__ == "__main__":
    main()
