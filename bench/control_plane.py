"""What the job system costs per job, and whether one worker keeps a GPU busy (issue 15).

All on this machine, against one private redis-server, every figure a CPU cost or a ratio
measured in the same run:

1. Floor. A plain Celery no-op task (publish, consume, ack, one INCR; `bench/celery_noop.py`,
   consumed with loraq's own consumer settings and pool flags) on the same redis-server, about
   `--concurrency` tasks unfinished: CPU per task of that worker, of redis-server and of this
   process (the publisher): the worker target's yardstick.
2. Control plane. The real stack (uvicorn gateway, one Celery worker, the redis-server) on a tiny
   random BERT (hidden 32, 2 layers: its forward is nearly free, so what remains is the job
   system), jobs over base + `--adapters` adapters round-robin, short texts (6-16 words), about
   `--concurrency` jobs in flight (asyncio + httpx lanes, one job after another each), for job
   sizes 1, 16 and 256 in three modes: `async` (POST /v1/jobs, then GET /v1/jobs/{id}?wait=30
   until terminal: one long poll almost always), `encode` (POST /v1/encode/{model}, SIE's msgpack
   wire) and `embeddings` (POST /v1/embeddings). After a warm-up, CPU ms per job of the gateway,
   the worker, redis-server and the load generator (this process), from `/proc/<pid>/stat`
   before and after (`control_plane_procs`); jobs/s; latency. Beside each: the CPU tokenizing
   those jobs' texts costs, measured here in-process (the gateway tokenizes now, so its figure
   holds it; the worker target allows it on top), the worker's CPU in forwards (from its
   heartbeat: what the tiny model still costs, not the job system), and Redis calls per job by
   command.
3. Drain with a simulated H200. The same gateway; no worker. N jobs of ~128-token texts
   (120-136 tokens) over base + adapters are submitted and wait in the queues; then one worker
   starts (`bench/sim_worker.py`: the real worker process, whose engine the launcher replaces by
   a stand-in that sleeps, GIL released, for the time an H200 needs per batch, as modelled in
   `bench/h200_model.py`, and returns 1024-wide float32 vectors) and drains them.
   The H200 model (derivation in `bench/h200_model.py`, from `../shared/anchors/`): one forward
   of XLM-R large in bf16 takes 3.3 ms + 1.22 us (base) or 1.50 us (any adapter in the batch,
   gathered-bmm LoRA) per padded token (rows x longest row): 43.3 ms / 52.5 ms for 256 x 128
   tokens, i.e. 5,914 / 4,881 items/s as measured; 16 x 128 tokens with adapters: 6.4 ms.
   `gpu_busy` = modelled engine seconds / wall seconds from the first job's start to the last
   job's end (job store timestamps). Worker and Redis CPU per job are counted from the first
   completion on (start-up excluded).
4. Cluster ceiling. 1000 / Redis CPU ms per job (async, 16 items) = jobs/s one single-threaded
   redis-server carries; divided by what one busy simulated H200 consumes (16-item jobs per
   second at full batches of 128-token rows under the batch settings, with adapters: 287 jobs/s
   by default) = how many such GPU workers one Redis feeds.

The targets of issue 15 are printed beside the figures, with met / not met; the `bench/e2e.py`
ratio is read from `bench/results/e2e.json` (that bench needs the real MiniLM). `--profile DIR`
runs py-spy on the floor workers, during the async 1-item run on the gateway and the worker, and
during each drain on the worker from its first completion on (`control_plane_profile`); py-spy
shares the cores, so profile in a run of its own.
A short table, then one JSON line (also written to `--out` unless `--no-write`; `--quick`, a smoke
run, writes nothing unless `--out` is given). Settings of the stack can be changed with
`--env LORAQ_X=Y`, so later work compares like with like.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import control_plane_report as report
from bench.control_plane_load import MODES
from bench.control_plane_phases import (
    Bench,
    InProcessCosts,
    measure_config,
    measure_drain,
    measure_floor,
)
from bench.control_plane_procs import make_models, stack_env, stop_worker
from bench.e2e import make_texts
from bench.h200_model import H200Timing
from bench.results_file import publish
from common.model_files import load_tokenizer
from common.settings import BatchSettings
from loraq.stack import Stack, start_redis

RESULTS = Path(__file__).resolve().parent / "results"
SIZES = (1, 16, 256)
DRAIN_SIZES = (16, 256)
FULL: dict[str, Any] = {
    "jobs": {1: 1000, 16: 600, 256: 80},
    "drain": {16: 600, 256: 60},
    "floor": 3000,
    "warm": 64,
}
QUICK: dict[str, Any] = {
    "jobs": {1: 60, 16: 40, 256: 8},
    "drain": {16: 64, 256: 8},
    "floor": 200,
    "warm": 8,
}


def _counts(pairs: Sequence[str]) -> dict[int, int]:
    return {int(k): int(v) for k, v in (p.split("=", 1) for p in pairs)}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="a smoke run: few jobs, writes nothing")
    p.add_argument(
        "--jobs", nargs="*", default=[], metavar="SIZE=N", help="control-plane jobs per size"
    )
    p.add_argument(
        "--drain-jobs", nargs="*", default=[], metavar="SIZE=N", help="drain jobs per size"
    )
    p.add_argument("--floor-tasks", type=int, help="Celery no-op tasks")
    p.add_argument("--sizes", type=int, nargs="*", default=list(SIZES))
    p.add_argument("--modes", nargs="*", default=list(MODES), choices=MODES)
    p.add_argument("--drain-sizes", type=int, nargs="*", default=list(DRAIN_SIZES))
    p.add_argument("--concurrency", type=int, default=64, help="jobs in flight")
    p.add_argument("--adapters", type=int, default=8)
    p.add_argument("--skip", nargs="*", default=[], choices=["floor", "control", "drain"])
    p.add_argument("--env", nargs="*", default=[], metavar="LORAQ_X=Y", help="stack settings")
    p.add_argument("--profile", type=Path, help="py-spy into this folder (see above)")
    p.add_argument(
        "--out", type=Path, help="JSON output (default bench/results/control_plane.json)"
    )
    p.add_argument("--no-write", action="store_true")
    return p.parse_args(argv)


def _plan(args: argparse.Namespace) -> dict[str, Any]:
    base = QUICK if args.quick else FULL
    return {
        "jobs": {**base["jobs"], **_counts(args.jobs)},
        "drain": {**base["drain"], **_counts(args.drain_jobs)},
        "floor": args.floor_tasks or base["floor"],
        "warm": base["warm"],
    }


def _phase(name: str, run: Callable[[], Any]) -> Any:
    print(f"[control-plane] {name} ...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    out = run()
    print(
        f"[control-plane] {name}: {time.perf_counter() - started:.1f}s", file=sys.stderr, flush=True
    )
    return out


def run(b: Bench) -> dict[str, Any]:
    args = b.args
    result: dict[str, Any] = {"sizes": [], "control_plane": [], "drain": []}
    if "floor" not in args.skip:
        result["floor"] = _phase("floor", partial(measure_floor, b))
    b.stack.start_gateway()
    tokenizer = load_tokenizer(b.models.model_dir).tokenizer
    if "control" not in args.skip:
        costs = InProcessCosts(b.models.model_dir)
        texts = make_texts(4096)
        result["tiny_forward_ms_per_item"] = costs.forward_ms_per_item(texts[:1024])
        worker = b.stack.start_worker()
        b.stack.wait_ready()
        result["sizes"] = list(args.sizes)
        for size in args.sizes:
            for mode in args.modes:
                measure = partial(measure_config, b, worker, mode, size, costs, texts)
                result["control_plane"].append(_phase(f"{mode} x{size}", measure))
        stop_worker(b.stack, worker)
    if "drain" not in args.skip:
        for size in args.drain_sizes:
            drain = partial(measure_drain, b, size, tokenizer)
            result["drain"].append(_phase(f"drain x{size}", drain))
    return result


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    plan = _plan(args)
    work = Path(tempfile.mkdtemp(prefix="loraq-bench-cp-"))
    models = _phase("models", lambda: make_models(work, args.adapters))
    redis_proc, redis_url = start_redis(work / "redis")
    extra = dict(kv.split("=", 1) for kv in args.env)
    stack = Stack(env=stack_env(redis_url, models, extra), log_dir=work / "logs")
    load_before = os.getloadavg()
    try:
        result = run(Bench(args, plan, work, models, redis_proc, redis_url, stack))
    finally:
        stack.stop()
        redis_proc.stop()
    result = {
        "bench": "control_plane",
        "quick": args.quick,
        "cores": os.cpu_count(),
        "loadavg_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "concurrency": args.concurrency,
        "adapters": args.adapters,
        "env": extra,
        "h200_model": H200Timing().describe(),
        **result,
    }
    batch = BatchSettings(
        max_tokens=int(extra.get("LORAQ_BATCH__MAX_TOKENS", BatchSettings().max_tokens)),
        max_items=int(extra.get("LORAQ_BATCH__MAX_ITEMS", BatchSettings().max_items)),
    )
    result["cluster_ceiling"] = report.cluster_ceiling(result, batch)
    result["targets"] = report.targets(result, RESULTS)
    print(report.table(result))
    print(f"process logs: {work / 'logs'}", file=sys.stderr)
    out = args.out or (None if args.quick or args.no_write else RESULTS / "control_plane.json")
    publish(result, None if args.no_write else out)


if __name__ == "__main__":
    main()
