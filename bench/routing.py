"""Routing benchmark: the REAL `api.placement.Router` against round-robin, plain hashing and
least-loaded, in the simulator of `bench/routing_sim.py` (which says how jobs, workers and
heartbeats are modelled, and what each metric means).

The same jobs, in the same order, in two regimes. Open (plain names in the JSON): jobs arrive
as a Poisson process at `utilisation` x the workers' job capacity (default 0.85: 6.8 jobs/tick
for 8 workers); queues stay short (about 2 jobs per worker). Autoscaled (`autoscaled_` names):
a closed loop that tops the workers' total backlog up to `--queued-per-worker` (default 32)
jobs per worker every tick. That is where the Helm chart's KEDA scaler holds a loaded pool
(replicas = ceil(queued jobs / `listLength` 32)): with less work it removes workers, with more
it adds them.

Loads floors, per 1000 jobs: `reference_static_...`, the workers' slots holding the most
popular adapters for good (no policy that sees only past jobs does better: see
`reference_static_loads`), `reference_lookahead_...`, an idealised single cache that also
sees the autoscaled regime's queued jobs ahead (`reference_lookahead_loads`), and
`reference_clairvoyant_...`, that cache seeing every job to come (Belady's MIN: the fewest loads
of any cache of that size serving these jobs in order); each also as a share of the open
regime's round-robins' loads.

`--real` also runs the real stack on this machine (redis, gateway, 3 workers with 16 adapter slots,
300 jobs over 50 adapters) and reports the slot hit rate from the workers' heartbeats.

Last line of output: one JSON object (also written to bench/results/routing.json unless
`--no-write`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.routing_sim import (
    PolicyResult,
    SimConfig,
    Workload,
    make_workload,
    run_policies,
    run_regime,
)

if TYPE_CHECKING:
    from bench.routing_real import RealConfig

RESULTS = Path(__file__).resolve().parent / "results" / "routing.json"


def reference_static_loads(cfg: SimConfig, workload: Workload) -> float:
    """Loads per 1000 jobs with the `workers x slots` most used adapters held for good.

    When each job's adapter is drawn independently of the past, as here, holding the most
    popular adapters is the best any cache that sees only past jobs can do (the A0 policy of
    Aho, Denning and Ullman, "Principles of optimal page replacement", JACM 1971). Splitting the
    slots over workers and routing between them cannot help: the union of the workers' slots is
    one cache of `workers x slots` adapters that misses at most when some worker loads. So no
    routing and eviction policy gets below this, but for the jobs it can see queued ahead
    (`reference_lookahead_loads`)."""
    counts = Counter(lora_id for lora_id in workload.lora_ids if lora_id is not None)
    held = counts.most_common(cfg.workers * cfg.slots)
    misses = sum(counts.values()) - sum(n for _, n in held) + len(held)
    return round(1000 * misses / len(workload.lora_ids), 2)


def reference_lookahead_loads(cfg: SimConfig, workload: Workload, window: int) -> float:
    """Loads per 1000 jobs of an idealised cache: all `workers x slots` slots in one pool, the
    popularity of every adapter over the whole run known, and the adapters of the next `window`
    jobs known (the jobs queued ahead). A miss evicts the least popular adapter that no job in
    the window needs, else the one needed last. Real workers have fewer options (a slot belongs
    to one worker, popularity must be learnt, the router must also balance), so this is below
    anything they reach. With `window` the whole run, this is Belady's MIN (evict the adapter
    needed furthest ahead): no cache of that size, told every job to come, loads less."""
    ids = workload.lora_ids
    counts = Counter(lora_id for lora_id in ids if lora_id is not None)
    never = len(ids) + window + 1
    next_use = [never] * len(ids)
    upcoming: dict[str, int] = {}
    for i in range(len(ids) - 1, -1, -1):
        if (lora_id := ids[i]) is not None:
            next_use[i] = upcoming.get(lora_id, never)
            upcoming[lora_id] = i
    held: dict[str, int] = {}  # adapter -> when it is next needed
    misses = 0
    for i, lora_id in enumerate(ids):
        if lora_id is None:
            continue
        if lora_id not in held:
            misses += 1
            if len(held) >= cfg.workers * cfg.slots:
                idle = [a for a, at in held.items() if at > i + window]
                victim = (
                    min(idle, key=counts.__getitem__) if idle else max(held, key=held.__getitem__)
                )
                del held[victim]
        held[lora_id] = next_use[i]
    return round(1000 * misses / len(ids), 2)


def flat(results: dict[str, PolicyResult]) -> dict[str, Any]:
    """loraq's figures under plain names, the others' under `<policy>_` names."""
    out: dict[str, Any] = {}
    for name, result in results.items():
        prefix = "" if name == "loraq" else f"{name}_"
        for key, value in asdict(result).items():
            if key not in ("policy", "jobs", "adapter_jobs") and value is not None:
                out[prefix + key] = value
    return out


def print_table(results: dict[str, PolicyResult]) -> None:
    print(
        f"{'policy':<16}{'loads/1000':>11}{'hit rate':>9}{'max/mean':>9}{'even':>6}{'>cap':>7}"
        f"{'util':>7}{'jobs/t':>7}{'p50':>6}{'p99':>7}"
    )
    for name, r in results.items():
        print(
            f"{name:<16}{r.loads_per_1000_jobs:>11.1f}{r.hit_rate:>9.3f}"
            f"{r.max_mean_backlog:>9.3f}{r.max_mean_backlog_even:>6.2f}{r.over_cap_share:>7.3f}"
            f"{r.utilisation:>7.3f}{r.jobs_per_tick:>7.2f}"
            f"{r.p50_latency_ticks:>6.0f}{r.p99_latency_ticks:>7.0f}"
        )


def real_prediction(rc: RealConfig) -> dict[str, Any]:
    """The simulator on the real run's shape, for comparison with what the workers report."""
    cfg = SimConfig(
        adapters=rc.adapters,
        workers=rc.workers,
        slots=rc.slots,
        jobs=rc.jobs,
        base_share=rc.base_share,
        seed=rc.seed,
    )
    results = run_policies(cfg)
    return {f"real_sim_{k}_hit_rate": r.hit_rate for k, r in results.items()}


# ---------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    defaults = SimConfig()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--eviction", choices=("uses", "lru"), default=defaults.eviction)
    names = ("adapters", "workers", "slots", "concurrency", "use_halflife", "jobs", "refresh")
    for name in (*names, "heartbeat", "shards", "seed"):
        parser.add_argument("--" + name, type=int, default=getattr(defaults, name))
    for name in ("zipf_s", "base_share", "utilisation", "load_cost", "tick_s", "epsilon"):
        parser.add_argument(
            "--" + name.replace("_", "-"), type=float, default=getattr(defaults, name)
        )
    parser.add_argument("--min-mean", type=float, default=defaults.min_mean)
    parser.add_argument(
        "--queued-per-worker",
        dest="autoscaled_queued",
        type=int,
        default=32,
        help="the autoscaled regime's jobs per worker (KEDA's listLength in the Helm chart); "
        "0 skips that regime",
    )
    parser.add_argument(
        "--no-completions",
        dest="completions",
        action="store_false",
        help="the router hears no completions (slow: it then scans every placement it made in "
        "the last 600 simulated seconds on each route)",
    )
    parser.add_argument("--no-fresh", action="store_true", help="skip the loraq_fresh run")
    parser.add_argument("--real", action="store_true", help="also run the real stack")
    parser.add_argument("--no-write", action="store_true", help=f"do not write {RESULTS.name}")
    return parser.parse_args()


def regime_summary(results: dict[str, PolicyResult], prefix: str) -> dict[str, Any]:
    """One regime's figures under `prefix`, with loraq's loads against the round-robins' and
    whether the issue's targets (loads <= 0.25x round-robin, max/mean backlog <= 1.25) hold."""
    loraq = results["loraq"]
    out = {prefix + key: value for key, value in flat(results).items()}
    for baseline in ("round_robin", "round_robin_lru"):
        if baseline in results:
            ratio = loraq.loads_per_1000_jobs / results[baseline].loads_per_1000_jobs
            out[f"{prefix}loads_vs_{baseline}"] = round(ratio, 3)
    out[prefix + "target_loads_met"] = out[prefix + "loads_vs_round_robin"] <= 0.25
    out[prefix + "target_balance_met"] = loraq.max_mean_backlog <= 1.25
    return out


def references(cfg: SimConfig, window: int, out: dict[str, Any]) -> dict[str, Any]:
    """The loads floors (`reference_static_loads`, `reference_lookahead_loads` with `window`
    and with the whole run ahead) per 1000 jobs, and as a share of the open regime's
    round-robins' loads."""
    workload = make_workload(cfg)
    floors = {
        "static": reference_static_loads(cfg, workload),
        "lookahead": reference_lookahead_loads(cfg, workload, window),
        "clairvoyant": reference_lookahead_loads(cfg, workload, len(workload.lora_ids)),
    }
    refs: dict[str, Any] = {"reference_lookahead_window_jobs": window}
    for name, loads in floors.items():
        refs[f"reference_{name}_loads_per_1000_jobs"] = loads
        for baseline in ("round_robin", "round_robin_lru"):
            if (theirs := out.get(f"{baseline}_loads_per_1000_jobs")) is not None:
                refs[f"reference_{name}_vs_{baseline}"] = round(loads / theirs, 3)
    return refs


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    cfg = SimConfig(**{k: v for k, v in vars(args).items() if k in SimConfig.__dataclass_fields__})
    regimes = {"": (cfg, f"open arrivals at {cfg.utilisation:.0%} of the workers' job capacity")}
    if args.autoscaled_queued:
        regimes["autoscaled_"] = (
            replace(cfg, queued_per_worker=args.autoscaled_queued),
            f"autoscaled: a closed loop keeping {args.autoscaled_queued} jobs per worker",
        )
    print(f"simulated: {cfg.jobs} jobs, {cfg.workers} workers x {cfg.slots} slots")
    out: dict[str, Any] = {"bench": "routing"}
    for prefix, (regime, title) in regimes.items():
        results = run_regime(regime, fresh=not args.no_fresh)
        print(title)
        print_table(results)
        out |= regime_summary(results, prefix)
    out |= references(cfg, args.autoscaled_queued * cfg.workers, out)
    print(
        "loads floor: {reference_static_loads_per_1000_jobs} (the most popular adapters held), "
        "{reference_lookahead_loads_per_1000_jobs} (one idealised cache seeing "
        "{reference_lookahead_window_jobs} jobs ahead), "
        "{reference_clairvoyant_loads_per_1000_jobs} (that cache seeing every job ahead)".format(
            **out
        )
    )
    out |= {
        "sim_s": round(time.perf_counter() - started, 1),
        "params": {k: v for k, v in asdict(cfg).items() if k != "model"},
        "autoscaled_queued_per_worker": args.autoscaled_queued,
    }
    if args.real:
        from bench.routing_real import RealConfig, run_real

        rc = RealConfig()
        real = {**run_real(rc), **real_prediction(rc)}
        print(
            f"real: {real['real_jobs']} jobs, hit rate {real['real_hit_rate']} "
            f"(simulated on that shape: loraq {real['real_sim_loraq_hit_rate']}, round-robin "
            f"{real['real_sim_round_robin_hit_rate']}), jobs per worker "
            f"{real['real_jobs_per_worker']}"
        )
        out |= {**real, "real_params": asdict(rc)}
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
