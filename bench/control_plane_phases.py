"""The control-plane benchmark's phases (`bench/control_plane.py` says what each measures): the
Celery floor, the control-plane cost of one job configuration, and the simulated-H200 drain."""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import redis

from bench.celery_noop import DONE_KEY, NOOP_QUEUE, NOOP_TASK, make_app
from bench.control_plane_load import BenchError, CompletionCounter, build_calls, run_floor, run_load
from bench.control_plane_procs import (
    LOADGEN,
    Models,
    Payload,
    cpu_ms_per_job,
    cpu_snapshot,
    make_payloads,
    start_bench_worker,
    stop_worker,
    texts_of_tokens,
)
from bench.control_plane_profile import Profilers
from bench.h200_model import BGE_M3_DIMS
from bench.sim_worker import LOG_ENV
from common.heartbeats import live_worker_ids, live_worker_infos
from common.job_store import JobStore
from common.settings import DEFAULT_MODEL_ID, Settings
from loraq.stack import Process, Stack, wait_until


@dataclass
class Bench:
    args: argparse.Namespace
    plan: Mapping[str, Any]
    work: Path
    models: Models
    redis_proc: Process
    redis_url: str
    stack: Stack

    def pids(self, worker: Process | None, gateway: bool = True) -> dict[str, int]:
        pids = {"redis": self.redis_proc.popen.pid, LOADGEN: os.getpid()}
        if gateway and self.stack.gateway is not None:
            pids["gateway"] = self.stack.gateway.popen.pid
        if worker is not None:
            pids["worker-0"] = worker.popen.pid
        return pids


def _percentile(values: Sequence[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 1) if values else 0.0


def measure_floor(b: Bench) -> dict[str, Any]:
    worker = start_bench_worker(b.stack, "celery_noop.py", {})
    app = make_app(Settings(redis_url=b.redis_url))
    counter = redis.Redis.from_url(b.redis_url)
    window = b.args.concurrency

    def send() -> None:
        app.send_task(NOOP_TASK, queue=NOOP_QUEUE)

    def run(tasks: int, idle_s: float) -> float:
        base = int(counter.get(DONE_KEY) or 0)
        return run_floor(
            send, lambda: int(counter.get(DONE_KEY) or 0) - base, tasks, window, idle_s
        )

    try:
        run(b.plan["warm"], idle_s=120)  # the worker starts meanwhile
        pids = b.pids(worker, gateway=False)
        profilers = _profilers(b, {"floor-worker": worker.popen.pid})
        before = cpu_snapshot(pids)
        wall = run(b.plan["floor"], idle_s=60)
        after = cpu_snapshot(pids)
        profile = profilers.stop() if profilers else None
    finally:
        stop_worker(b.stack, worker)
        app.close()
        counter.close()
    tasks = b.plan["floor"]
    out = {
        "tasks": tasks,
        "wall_s": round(wall, 3),
        "tasks_per_s": round(tasks / wall, 1),
        "cpu_ms_per_task": cpu_ms_per_job(before, after, tasks),
    }
    if profile is not None:
        out["profile"] = {"dir": str(b.args.profile), **profile}
    return out


def _profilers(b: Bench, pids: Mapping[str, int]) -> Profilers | None:
    """py-spy on these processes, if `--profile` asked for it."""
    if b.args.profile is None:
        return None
    profilers = Profilers(b.args.profile, pids)
    profilers.start()
    return profilers


class InProcessCosts:
    """CPU the worker spends on the texts themselves: tokenizing (what the worker target
    allows on top) and the tiny model's forward (information)."""

    def __init__(self, model_dir: Path) -> None:
        import torch

        from worker.engine.engine import Engine
        from worker.tokenizing import WorkerTokenizer

        torch.set_num_threads(1)  # as the benchmark's worker (LORAQ_WORKER__TORCH_THREADS)
        self.engine = Engine.load(DEFAULT_MODEL_ID, model_dir)
        self.tokenizer = WorkerTokenizer(DEFAULT_MODEL_ID, model_dir, self.engine.default_normalize)

    def tokenize_ms_per_job(self, payloads: Sequence[Payload]) -> float:
        sample = payloads[:200]
        started = time.process_time()
        for _, texts in sample:
            self.tokenizer.tokenize(texts, True)
        return round((time.process_time() - started) * 1000 / len(sample), 4)

    def forward_ms_per_item(self, texts: Sequence[str], batch: int = 64) -> float:
        from worker.engine.types import Row

        rows = [Row(t, None, True) for t in self.tokenizer.tokenize(list(texts), True)]
        self.engine.encode(rows[:batch])
        started = time.process_time()
        for i in range(0, len(rows), batch):
            self.engine.encode(rows[i : i + batch])
        return round((time.process_time() - started) * 1000 / len(rows), 4)


def forward_cpu_s(client: redis.Redis, after: float) -> float:
    """The worker's CPU seconds in forwards so far (the batch thread's, from its heartbeat), as
    of a heartbeat written after `after`: with no load running, that is exact."""
    fresh: list[float] = []

    def heartbeat() -> bool:
        infos = live_worker_infos(client)
        fresh[:] = [w.forward_cpu_s for w in infos if w.seen_at > after]
        return bool(fresh)

    wait_until(heartbeat, 30, "a worker heartbeat")
    return sum(fresh)


def commands_per_job(
    before: Mapping[str, Any], after: Mapping[str, Any], jobs: int
) -> dict[str, list[float]]:
    """Per Redis command, [calls, microseconds executing] per job, costliest first. The time is
    Redis's own for the command; what it spends reading and answering each call is not in it,
    which is why Redis's CPU per job is several times their sum: fewer calls is what pays."""
    rows: dict[str, list[float]] = {}
    for name, stat in after.items():
        old = before.get(name, {"calls": 0, "usec": 0})
        calls = stat["calls"] - old["calls"]
        if calls > 0:
            usec = stat["usec"] - old["usec"]
            rows[name.removeprefix("cmdstat_")] = [round(calls / jobs, 3), round(usec / jobs, 1)]
    return dict(sorted(rows.items(), key=lambda item: -item[1][1]))


def measure_config(
    b: Bench, worker: Process, mode: str, size: int, costs: InProcessCosts, texts: list[str]
) -> dict[str, Any]:
    jobs, warm = b.plan["jobs"][size], b.plan["warm"]
    payloads = make_payloads(texts, size, warm + jobs, b.models.lora_ids)
    calls = build_calls(mode, payloads, DEFAULT_MODEL_ID)
    run_load(b.stack.url, mode, calls[:warm], b.args.concurrency)
    client = redis.Redis.from_url(b.redis_url)
    forward_before = forward_cpu_s(client, time.time())
    pids = b.pids(worker)
    profilers = None
    if mode == "async" and size == 1:
        profilers = _profilers(b, {"gateway": pids["gateway"], "worker": pids["worker-0"]})
    commands_before = client.info("commandstats")
    before = cpu_snapshot(pids)
    load = run_load(b.stack.url, mode, calls[warm:], b.args.concurrency)
    after = cpu_snapshot(pids)
    commands = commands_per_job(commands_before, client.info("commandstats"), jobs)
    forward_ms = (forward_cpu_s(client, time.time()) - forward_before) * 1000 / jobs
    client.close()
    row: dict[str, Any] = {
        "mode": mode,
        "items_per_job": size,
        "jobs": jobs,
        "wall_s": round(load.wall_s, 3),
        "jobs_per_s": round(jobs / load.wall_s, 1),
        "items_per_s": round(jobs * size / load.wall_s, 1),
        "requests_per_job": round(load.requests / jobs, 3),
        "cpu_ms_per_job": cpu_ms_per_job(before, after, jobs),
        "latency_ms": {
            "p50": _percentile(load.latencies_ms, 50),
            "p99": _percentile(load.latencies_ms, 99),
        },
        "tokenize_ms_per_job": costs.tokenize_ms_per_job(payloads[warm:]),
        "worker_forward_cpu_ms_per_job": round(forward_ms, 3),
        "redis_commands_per_job": commands,
    }
    if profilers is not None:
        row["profile"] = {"dir": str(b.args.profile), **profilers.stop()}
    return row


def _wait_no_worker(b: Bench) -> None:
    client = redis.Redis.from_url(b.redis_url)
    try:
        wait_until(lambda: not live_worker_ids(client, DEFAULT_MODEL_ID), 60, "no live worker")
    finally:
        client.close()
    # the gateway's cluster view forgets the worker at its next refresh
    time.sleep(3 * Settings(redis_url=b.redis_url).routing.refresh_s)


def _forwards(log: Path) -> np.ndarray:
    """Per forward: start, end, modelled seconds, rows, padded tokens, adapters."""
    rows = [[float(x) for x in line.split()] for line in log.read_text().splitlines() if line]
    return np.array(rows, dtype=float).reshape(-1, 6)


def _job_window(b: Bench, job_ids: Sequence[str]) -> tuple[float, float]:
    client = redis.Redis.from_url(b.redis_url)
    store = JobStore(client, 3600)
    try:
        jobs = [store.get(job_id) for job_id in job_ids]
    finally:
        client.close()
    bad = [j for j in jobs if j is None or j.status != "succeeded" or j.dims != BGE_M3_DIMS]
    if bad:
        raise BenchError(
            f"{len(bad)} drained jobs did not succeed with {BGE_M3_DIMS} dims: {bad[0]}"
        )
    starts = [j.started_at for j in jobs if j is not None and j.started_at is not None]
    ends = [j.finished_at for j in jobs if j is not None and j.finished_at is not None]
    return min(starts), max(ends)


def measure_drain(b: Bench, size: int, tokenizer: Any) -> dict[str, Any]:
    jobs = b.plan["drain"][size]
    texts = texts_of_tokens(max(jobs * size, 1), 120, 136, tokenizer, seed=size)
    calls = build_calls(
        "submit", make_payloads(texts, size, jobs, b.models.lora_ids), DEFAULT_MODEL_ID
    )
    _wait_no_worker(b)
    job_ids = run_load(b.stack.url, "submit", calls, b.args.concurrency).job_ids
    counter = CompletionCounter(b.redis_url, job_ids)
    log = b.work / f"sim-engine-{size}.log"
    log.unlink(missing_ok=True)
    worker = start_bench_worker(b.stack, "sim_worker.py", {LOG_ENV: str(log)})
    pids = b.pids(worker, gateway=False)
    first: dict[str, Any] = {}
    profilers: list[Profilers] = []

    def on_done(done: int) -> None:
        if not first:
            first.update(done=done, cpu=cpu_snapshot(pids))
            profiler = _profilers(b, {f"drain-{size}-worker": worker.popen.pid})
            profilers.extend([profiler] if profiler is not None else [])

    def check() -> None:
        if not worker.alive:
            raise BenchError(f"the simulated-H200 worker exited:\n{worker.log_tail()}")

    try:
        counter.wait_all(on_done, check)
        after = cpu_snapshot(pids)
        profile = {"dir": str(b.args.profile), **profilers[0].stop()} if profilers else None
    finally:
        counter.close()
        stop_worker(b.stack, worker)
    start, end = _job_window(b, job_ids)
    fw = _forwards(log)
    modelled, slept = float(fw[:, 2].sum()), float((fw[:, 1] - fw[:, 0]).sum())
    wall = end - start
    return {
        "items_per_job": size,
        "jobs": jobs,
        "mean_tokens_per_item": round(
            float(np.mean([len(e.ids) for e in tokenizer.encode_batch(texts)])), 1
        ),
        "wall_s": round(wall, 3),
        "jobs_per_s": round(jobs / wall, 1),
        "items_per_s": round(jobs * size / wall, 1),
        "engine_modelled_s": round(modelled, 3),
        "engine_slept_s": round(slept, 3),
        "gpu_busy": round(modelled / wall, 3),
        "batches": len(fw),
        "rows_per_batch": round(float(fw[:, 3].mean()), 1),
        "padded_tokens_per_batch": round(float(fw[:, 4].mean()), 1),
        "lora_batches": int(fw[:, 5].sum()),
        "cpu_ms_per_job": cpu_ms_per_job(first["cpu"], after, max(1, jobs - first["done"])),
        **({"profile": profile} if profile is not None else {}),
    }
