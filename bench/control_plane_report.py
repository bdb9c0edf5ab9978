"""The control-plane benchmark's verdicts and table: targets from issue 15 beside the measured
figures, the cluster ceiling, and a short plain-text summary."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bench.h200_model import H200Timing
from common.settings import BatchSettings

#: Issue 15's targets.
WORKER_VS_FLOOR = 1.5  # x the Celery floor's worker CPU per task ...
WORKER_MS_PER_ITEM = 0.030  # ... plus this per item, beyond tokenization
GATEWAY_MS = 2.0  # submit + one long poll (1- and 16-item jobs, as the issue measured)
REDIS_MS = 0.3
GPU_BUSY = {16: 0.9, 256: 0.97}
E2E_RATIO = 0.9
CEILING_WORKERS = 8
#: The cluster ceiling is stated for jobs of this many items, of ~this many tokens each.
CEILING_ITEMS = 16
ROW_TOKENS = 128


def _row(
    name: str, measured: float | None, limit: float, at_most: bool, **extra: Any
) -> dict[str, Any]:
    met = None if measured is None else (measured <= limit if at_most else measured >= limit)
    op = "<=" if at_most else ">="
    return {
        "target": name,
        "measured": measured,
        "limit": f"{op} {round(limit, 3)}",
        "met": met,
        **extra,
    }


def _config(result: Mapping[str, Any], mode: str, size: int) -> Mapping[str, Any] | None:
    for row in result.get("control_plane", []):
        if row["mode"] == mode and row["items_per_job"] == size:
            return dict(row)
    return None


def _drain(result: Mapping[str, Any], size: int) -> Mapping[str, Any] | None:
    return next((d for d in result.get("drain", []) if d["items_per_job"] == size), None)


def cluster_ceiling(result: Mapping[str, Any], batch: BatchSettings) -> dict[str, Any] | None:
    """Jobs/s one redis-server carries at the measured Redis CPU per job (async, 16 items: it
    is single-threaded, so 1,000 ms of CPU a second), and how many simulated H200s that feeds.
    An H200 worker that keeps its GPU busy runs full batches (the queue is never empty), so its
    demand is the timing model's throughput at full batches of ~128-token rows under `batch`,
    with adapters; what the drain's own (smaller) batches give is shown beside it."""
    config = _config(result, "async", CEILING_ITEMS) or _config(result, "async", 1)
    if config is None:
        return None
    redis_ms = config["cpu_ms_per_job"]["redis"]
    ceiling = 1000 / redis_ms if redis_ms > 0 else float("inf")
    rows = min(batch.max_items, batch.max_tokens // ROW_TOKENS)
    demand = H200Timing().items_per_s(rows, ROW_TOKENS, lora=True) / CEILING_ITEMS
    out: dict[str, Any] = {
        "redis_ms_per_job": redis_ms,
        "redis_ms_from": f"async, {config['items_per_job']}-item jobs",
        "redis_jobs_per_s": round(ceiling, 1),
        "h200_jobs_per_s_per_worker": round(demand, 1),
        "h200_demand_from": f"timing model, full batches: {rows} rows x {ROW_TOKENS} tokens, LoRA",
        "h200_workers_fed": round(ceiling / demand, 2),
    }
    drain = _drain(result, CEILING_ITEMS)
    if drain is not None and drain["engine_modelled_s"] > 0:
        out["h200_jobs_per_s_at_drain_batches"] = round(
            drain["jobs"] / drain["engine_modelled_s"], 1
        )
        out["measured_worker_jobs_per_s"] = drain["jobs_per_s"]
        out["workers_fed_at_measured_worker_rate"] = round(ceiling / drain["jobs_per_s"], 2)
    return out


def e2e_ratio(results_dir: Path) -> tuple[float | None, str]:
    path = results_dir / "e2e.json"
    if not path.exists():
        return None, "bench/results/e2e.json missing (make bench-e2e)"
    return float(json.loads(path.read_text())["ratio"]), "bench/results/e2e.json (not this run)"


def targets(result: Mapping[str, Any], results_dir: Path) -> list[dict[str, Any]]:
    rows = []
    floor = result.get("floor")
    for size in result.get("sizes", []):
        config = _config(result, "async", size)
        if config is None:
            continue
        cpu = config["cpu_ms_per_job"]
        if floor is not None:
            allowed = (
                WORKER_VS_FLOOR * floor["cpu_ms_per_task"]["worker-0"]
                + config["tokenize_ms_per_job"]
                + WORKER_MS_PER_ITEM * size
            )
            forward = config.get("worker_forward_cpu_ms_per_job", 0.0)
            rows.append(
                _row(
                    f"worker CPU ms/job, async {size}", cpu["worker-0"], allowed, True,
                    without_forward=round(cpu["worker-0"] - forward, 3),
                )
            )  # fmt: skip
        if size <= CEILING_ITEMS:
            rows.append(
                _row(
                    f"gateway CPU ms/job, async {size}", cpu["gateway"], GATEWAY_MS, True,
                    without_tokenizing=round(cpu["gateway"] - config["tokenize_ms_per_job"], 3),
                )
            )  # fmt: skip
        rows.append(_row(f"redis CPU ms/job, async {size}", cpu["redis"], REDIS_MS, True))
    for size, limit in GPU_BUSY.items():
        drain = _drain(result, size)
        if drain is not None:
            rows.append(_row(f"gpu_busy, {size}-item jobs", drain["gpu_busy"], limit, False))
    ratio, source = e2e_ratio(results_dir)
    rows.append(_row("bench/e2e.py ratio (MiniLM)", ratio, E2E_RATIO, False, source=source))
    ceiling = result.get("cluster_ceiling")
    if ceiling is not None:
        fed = ceiling["h200_workers_fed"]
        rows.append(_row("simulated H200 workers fed by one Redis", fed, CEILING_WORKERS, False))
    return rows


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def table(result: Mapping[str, Any]) -> str:
    names = ["gateway", "worker-0", "redis", "loadgen"]
    lines = [
        "control plane (tiny model): CPU ms per job per process; (forward): the worker's part "
        "in forwards",
        f"{'mode':<12}{'items':>6}{'jobs/s':>9}{'p50 ms':>9}"
        + "".join(f"{n:>10}" for n in names)
        + f"{'(forward)':>10}",
    ]
    if (floor := result.get("floor")) is not None:
        cpu = floor["cpu_ms_per_task"]
        lines.append(
            f"{'Celery no-op':<18}{floor['tasks_per_s']:>9.1f}{'':>9}"
            + "".join(f"{_fmt(cpu.get(n)):>10}" for n in names)
        )
    for row in result.get("control_plane", []):
        cpu = row["cpu_ms_per_job"]
        lines.append(
            f"{row['mode']:<12}{row['items_per_job']:>6}{row['jobs_per_s']:>9.1f}"
            f"{row['latency_ms']['p50']:>9.1f}"
            + "".join(f"{_fmt(cpu.get(n)):>10}" for n in names)
            + f"{_fmt(row.get('worker_forward_cpu_ms_per_job')):>10}"
        )
    if result.get("drain"):
        lines += ["", f"{'drain (sim H200)':<18}{'jobs/s':>9}{'items/s':>10}{'gpu_busy':>10}"
                  f"{'rows/batch':>12}{'worker ms/job':>15}"]  # fmt: skip
        for d in result["drain"]:
            lines.append(
                f"{str(d['items_per_job']) + '-item jobs':<18}{d['jobs_per_s']:>9.1f}"
                f"{d['items_per_s']:>10.0f}{d['gpu_busy']:>10.3f}{d['rows_per_batch']:>12.1f}"
                f"{d['cpu_ms_per_job']['worker-0']:>15.2f}"
            )
    if (c := result.get("cluster_ceiling")) is not None:
        lines += [
            "",
            f"ceiling: redis {c['redis_ms_per_job']} ms/job -> {c['redis_jobs_per_s']} jobs/s; "
            f"one H200 needs {c['h200_jobs_per_s_per_worker']} jobs/s -> "
            f"{c['h200_workers_fed']} H200 workers per Redis",
        ]
    lines += ["", f"{'target':<42}{'measured':>10}  {'limit':<10}met"]
    for t in result.get("targets", []):
        lines.append(
            f"{t['target']:<42}{_fmt(t['measured']):>10}  {t['limit']:<10}{_fmt(t['met'])}"
        )
    return "\n".join(lines)
