"""`loraq demo`: the whole system on this machine, start to finish.

Brings up Redis (unless one is reachable), the gateway and a worker; fine-tunes the two demo
adapters on first run; submits corpus and query jobs for the base model and both adapters through
the real HTTP API; polls them; and prints top-1 retrieval on held-out queries per domain, so the
effect of each adapter (and of the wrong one) is visible. Everything is shut down at the end.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from common.settings import DEFAULT_MODEL_ID, Settings, resolve_model_path
from loraq.demo_data import DOMAINS, Domain
from loraq.stack import (
    LOCAL_DEV_ENV,
    Process,
    Stack,
    free_port,
    needs_local_redis,
    start_redis,
)


def make_demo_adapters(out_root: Path) -> list[str]:
    from loraq.training import create_demo_adapters

    model_dir = resolve_model_path(Settings().models[DEFAULT_MODEL_ID])
    return create_demo_adapters(out_root, model_dir, DEFAULT_MODEL_ID)


def _submit(client: httpx.Client, texts: list[str], lora_id: str | None) -> str:
    options = {"lora_id": lora_id} if lora_id else {}
    body = {
        "model": DEFAULT_MODEL_ID,
        "items": [{"text": t} for t in texts],
        "params": {"options": options},
    }
    response = client.post("/v1/jobs", json=body)
    response.raise_for_status()
    job_id: str = response.json()["id"]
    return job_id


def _poll(client: httpx.Client, job_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline, delay = time.monotonic() + timeout, 0.02
    while True:
        job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] == "succeeded":
            return job
        if job["status"] in ("failed", "cancelled") or time.monotonic() > deadline:
            raise RuntimeError(f"job {job_id} ended {job['status']}: {job.get('error')}")
        time.sleep(delay)
        delay = min(delay * 2, 0.5)


def _vectors(job: dict[str, Any]) -> np.ndarray:
    return np.array([item["dense"] for item in job["result"]["items"]], dtype=np.float32)


def _short(text: str, width: int = 64) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _report(domain: Domain, encoders: list[str], top1: dict[str, np.ndarray]) -> str:
    gold = np.array([g for _, g in domain.held_out])
    cells = (f"{(top1[e] == gold).sum()}/{len(gold)}" for e in encoders)
    return f"  {domain.name:<10}" + "".join(f"{cell:<18}" for cell in cells)


def _examples(domain: Domain, own: str, top1: dict[str, np.ndarray], limit: int = 2) -> list[str]:
    lines: list[str] = []
    width = len(own)
    for i, (query, gold) in enumerate(domain.held_out):
        if top1["base"][i] != gold and top1[own][i] == gold and len(lines) < 3 * limit:
            lines += [
                f'  "{query}"',
                f"     {'base':<{width}} -> {_short(domain.passages[top1['base'][i]])}  (wrong)",
                f"     {own} -> {_short(domain.passages[top1[own][i]])}  (right)",
            ]
    return lines


def run_demo(state_dir: Path, port: int = 0) -> int:
    settings = Settings()
    adapter_dir = state_dir / "adapters"
    print("fine-tuning the demo adapters (first run only) ...", flush=True)
    started = time.perf_counter()
    lora_ids = make_demo_adapters(adapter_dir)
    print(f"  {', '.join(lora_ids)} ready in {adapter_dir} ({time.perf_counter() - started:.1f}s)")

    env = {**LOCAL_DEV_ENV, **{k: v for k, v in os.environ.items() if k.startswith("LORAQ_")}}
    env["LORAQ_ADAPTERS__DIR"] = str(adapter_dir.resolve())
    redis_proc: Process | None = None
    if needs_local_redis(settings):
        redis_proc, env["LORAQ_REDIS_URL"] = start_redis(
            state_dir / "redis", log_dir=state_dir / "logs"
        )
    stack = Stack(env=env, log_dir=state_dir / "logs", port=port or free_port())
    try:
        print(f"starting the gateway at {stack.url} and one worker ...", flush=True)
        stack.start_gateway()
        stack.start_worker()
        stack.wait_ready()
        return _run_jobs(stack.url, lora_ids)
    finally:
        stack.stop()
        if redis_proc is not None:
            redis_proc.stop()
        print("stack stopped.")


def _run_jobs(url: str, lora_ids: list[str]) -> int:
    encoders: list[str] = ["base", *lora_ids]
    with httpx.Client(base_url=url, timeout=60) as client:
        jobs = {}
        for domain in DOMAINS:
            queries = [q for q, _ in domain.held_out]
            for enc in encoders:
                lora_id = None if enc == "base" else enc
                jobs[domain.name, enc, "corpus"] = _submit(client, list(domain.passages), lora_id)
                jobs[domain.name, enc, "queries"] = _submit(client, queries, lora_id)
        print(f"submitted {len(jobs)} jobs (corpus + held-out queries x base and both adapters)")
        done = {key: _poll(client, job_id) for key, job_id in jobs.items()}
    totals = sorted(job["timing"]["total_ms"] for job in done.values())
    print(f"all {len(done)} succeeded; job latency p50 {totals[len(totals) // 2]:.0f} ms\n")

    header = "  " + " " * 10 + "".join(f"{e:<18}" for e in encoders)
    table, examples = ["top-1 retrieval on held-out queries (never trained on):", header], []
    for domain, own in zip(DOMAINS, lora_ids, strict=True):
        top1 = {}
        for enc in encoders:
            corpus = _vectors(done[domain.name, enc, "corpus"])
            query_vectors = _vectors(done[domain.name, enc, "queries"])
            top1[enc] = np.argmax(query_vectors @ corpus.T, axis=1)
        table.append(_report(domain, encoders, top1))
        examples += _examples(domain, own, top1)
    print("\n".join(table))
    if examples:
        print("\nwhere the domain adapter fixes the base model:")
        print("\n".join(examples))
    print()
    return 0
