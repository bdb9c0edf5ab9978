"""The routing simulator: workers, heartbeats and policies in discrete time.

Why a simulator: adapter loads and backlog balance come from a feedback loop (the router places
jobs, workers' slots change, the next heartbeat shows new warm sets and backlogs) that a unit test
of `route()` cannot show, and the real stack is far too slow for 100k jobs. So the loop runs here
in discrete time over a seeded workload, and every placement of the "loraq" policy is a call of
`Router.route` on snapshots fed to `Router.update`, with `Router.published` as the job is queued
and `Router.complete` for each finished job, as the gateway does (`api/submit.py`,
`api/cluster_view.py`, `api/waiter.py`): nothing of the router is copied.

Model (one tick = the time a worker takes to serve one job; `tick_s` = 10 ms by default):
- Jobs arrive as a Poisson process at `utilisation` x the workers' job capacity (default 0.85:
  6.8 jobs/tick for 8 workers), or, with `queued_per_worker` N, in a closed loop that tops the
  workers' total backlog up to N jobs per worker every tick. Adapters are Zipf(s) over `adapters`
  ids; `base_share` of jobs use the base model (lora_id None: never a load).
- Each worker serves its jobs in arrival order, one at a time. Like the real worker's task threads
  (`worker.runner`, `worker.adapter_cache`), it holds up to `concurrency` jobs at once (the
  worker's default, 32; the rest wait in its shard queues) and leases a job's adapter when it
  takes the job, until the job is done: a leased adapter is never evicted, and a job waits in
  the queue while every slot is leased. Taking a job whose adapter is not among the worker's
  `slots` warm adapters counts one adapter LOAD, evicts one unleased adapter (the worker's real
  eviction policy, `worker.eviction.UseCounts`, with `use_halflife`; `--eviction lru`: least
  recently used), and adds `load_cost` jobs' worth to the job's service (default 0.5:
  bench/results/cpu.json measured a cold load at ~4 ms p50 against ~8 ms for a 2-text job on
  CPU; on a GPU a load costs relatively more, try `--load-cost 2`). So loads eat capacity:
  `utilisation` below shows how much. Holding jobs cuts both ways: a held job's adapter stays
  warm until the job runs, but the slots that leases pin leave eviction fewer choices;
  `--concurrency 1` is a worker that takes each job only when it starts serving it.
- Like the gateway: workers write heartbeats (`WorkerView`: shard queues, warm = slot contents,
  backlog = jobs queued, held or in service, and the exact time it was taken) every `heartbeat`
  ticks (2 s, phases staggered); the router gets the latest heartbeats every `refresh` ticks
  (0.5 s) and hears every completion. `loraq_fresh` is the same router fed views read at each
  update (heartbeat 0): exact backlogs.
- Baselines through the same loop and the same workers: round-robin (job i -> worker i mod n),
  plain hashing (`stable_hash(lora_id) % n`; base jobs round-robin), neither bounded, and
  least-loaded (every job to the worker with the fewest jobs: the best balance there is); with
  `--eviction uses` (the default), also loraq and round-robin on workers with LRU slots
  (`loraq_lru`, `round_robin_lru`: the latter is a stock setup).

Metrics per policy:
- `loads_per_1000_jobs`: adapter loads per 1000 jobs (all jobs, base jobs included);
  `hit_rate` = 1 - loads / adapter jobs.
- `max_mean_backlog`: every tick, right after that tick's placements and before any service, take
  each worker's real backlog (queued, held or in service); over the ticks whose mean backlog is
  at least `min_mean` (2 jobs: below that one job more is already a ratio of 1.5;
  `balance_samples` says which share of ticks that leaves), the 99th percentile of max backlog /
  mean backlog (`..._mean`: the mean, `..._max`: the maximum). `..._even`: the same p99 had each
  sampled total been split as evenly as integers allow; no policy can do better. With 2 to 4 jobs
  per worker that is already far above 1.25 (17 jobs on 8 workers: 3 / 2.125 = 1.41).
- What the router guarantees is narrower, and checked here on every loraq placement
  (`cap_violations`, must be 0): on the loads it decides on (heartbeat backlog corrected by its own
  placements and completions since), no worker is sent a job above `ceil((1 + eps) x (total + 1) /
  n)`. Real backlogs meet the same bound only as far as those loads are right:
  `over_cap_share` is the share of sampled ticks whose largest real backlog is above
  `ceil((1 + eps) x total / n)`. The ceil and the +1 let max/mean pass 1 + eps at small
  backlogs even with exact loads: at mean 2.5 the cap is 4, a ratio of 1.6; at mean 8, 1.375.
- `utilisation`: work done (jobs + loads) / capacity while jobs arrive; at 1.0 a policy cannot
  keep up and its queues (and latencies) grow for the whole run. `jobs_per_tick`: jobs / ticks
  until the last one is done; the pool's throughput where it is saturated (autoscaled regime),
  where loads and idle workers cost jobs.
- `p50/p99_latency_ticks`: arrival to end of service, over all jobs (queues drained at the end).

`bench/routing.py` runs it and prints the figures.
"""

from __future__ import annotations

import math
import sys
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from api.placement import Router, WorkerView
from common import keys
from common.hashing import stable_hash
from common.settings import DEFAULT_MODEL_ID, AdapterSettings, WorkerSettings
from worker.eviction import UseCounts


@dataclass(frozen=True)
class SimConfig:
    adapters: int = 1000
    zipf_s: float = 1.1
    workers: int = 8
    slots: int = 32
    eviction: str = "uses"  # the worker's policy (uses: worker.eviction) or lru
    use_halflife: int = AdapterSettings().use_halflife
    concurrency: int = WorkerSettings().concurrency  # jobs a worker holds, adapters leased
    jobs: int = 100_000
    base_share: float = 0.10
    utilisation: float = 0.85  # offered job work / job capacity (load work not counted)
    # 0: jobs arrive as a Poisson process at `utilisation`. N: a closed loop, new jobs arrive
    # whenever the workers' total backlog is under N per worker (KEDA's target: bench/routing.py).
    queued_per_worker: int = 0
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
    concurrency: int
    load_units: int
    uses: UseCounts | None  # None: evict the least recently used
    lru: OrderedDict[str, None] = field(default_factory=OrderedDict)  # warm, least recent first
    queued: deque[tuple[int, str | None, int]] = field(default_factory=deque)  # job, lora, arrival
    held: deque[tuple[int, str | None, int, int]] = field(default_factory=deque)  # + work units
    leases: Counter[str] = field(default_factory=Counter)  # adapter -> jobs held that use it
    busy: int = 0  # work units left on the job in service
    current: tuple[int, str | None, int] = (0, None, 0)  # the job in service, as in `queued`
    loads: int = 0
    work: int = 0  # work units spent (jobs + loads)

    @property
    def backlog(self) -> int:
        return len(self.queued) + len(self.held) + (self.busy > 0)

    def view(self, seen_at: float) -> WorkerView:
        return WorkerView(self.id, self.queues, frozenset(self.lru), self.backlog, seen_at, seen_at)

    def enqueue(self, job: int, lora_id: str | None, now: int) -> None:
        self.queued.append((job, lora_id, now))
        self._take()

    def _take(self) -> None:
        """Take queued jobs, in order, while fewer than `concurrency` are held and the next
        one's adapter can be leased."""
        while self.queued and len(self.held) + (self.busy > 0) < self.concurrency:
            job, lora_id, arrived = self.queued[0]
            units = self._lease(lora_id)
            if units is None:
                return
            self.queued.popleft()
            self.held.append((job, lora_id, arrived, units))

    def _lease(self, lora_id: str | None) -> int | None:
        """The job's work units, its adapter leased (and loaded, if cold); None while every
        slot is leased to other jobs."""
        if lora_id is None:
            return UNITS
        warm = lora_id in self.lru
        unleased = [] if warm else [a for a in self.lru if not self.leases[a]]
        if not warm and len(self.lru) >= self.slots and not unleased:
            return None
        if self.uses is not None:
            self.uses.record(lora_id)
        self.leases[lora_id] += 1
        if warm:
            self.lru.move_to_end(lora_id)
            return UNITS
        self.loads += 1
        if len(self.lru) >= self.slots:
            victim = self.uses.least_used(unleased, str) if self.uses else unleased[0]
            assert victim is not None
            del self.lru[victim]
        self.lru[lora_id] = None
        return UNITS + self.load_units

    def _release(self, lora_id: str | None) -> None:
        if lora_id is not None:
            self.leases[lora_id] -= 1
            if not self.leases[lora_id]:
                del self.leases[lora_id]

    def step(self, now: int, done: list[tuple[int, int]]) -> None:
        """One tick of service; finished jobs go to `done` as (job, latency in ticks)."""
        budget = UNITS
        while budget:
            if self.busy == 0:
                if not self.held:
                    return
                job, lora_id, arrived, self.busy = self.held.popleft()
                self.current = (job, lora_id, arrived)
            spent = min(budget, self.busy)
            self.busy -= spent
            budget -= spent
            self.work += spent
            if self.busy == 0:
                job, lora_id, arrived = self.current
                self._release(lora_id)
                self._take()
                done.append((job, now + 1 - arrived))


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


class LeastLoaded:
    """Every job to the worker with the fewest jobs (counted from its own placements and the
    completions it hears, so exact): the best balance a policy can keep, whatever it costs in
    loads. A yardstick for `max_mean_backlog`, which no policy can push below this."""

    name = "least_loaded"

    def __init__(self, n: int) -> None:
        self.backlogs = [0] * n
        self.placed: dict[str, int] = {}

    def update(self, views: Sequence[WorkerView]) -> None:
        pass

    def pick(self, index: int, lora_id: str | None, job_id: str) -> int:
        n = len(self.backlogs)
        worker = min(range(n), key=lambda i: (self.backlogs[i], (i - index) % n))
        self.backlogs[worker] += 1
        self.placed[job_id] = worker
        return worker

    def complete(self, job_id: str) -> None:
        self.backlogs[self.placed.pop(job_id)] -= 1


class Loraq:
    """`api.placement.Router` itself, plus a check of its bound on the loads it decides on."""

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
        self.router.published(job_id)  # the simulator's queues take a job at once
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
    max_mean_backlog_even: float  # p99 if the same total backlogs had been split evenly
    over_cap_share: float  # share of those ticks with max backlog above the router's cap
    balance_samples: float  # share of ticks with mean backlog >= min_mean
    mean_backlog: float
    utilisation: float
    jobs_per_tick: float  # all jobs / ticks until the last is done: throughput when saturated
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
    even: list[float] = field(default_factory=list)  # the ratio of the most even integer split
    over_cap: int = 0
    backlog_sum: int = 0

    def add(self, backlogs: list[int]) -> None:
        total = sum(backlogs)
        self.backlog_sum += total
        if total >= self.min_mean * self.n:
            top = max(backlogs)
            self.ratios.append(top * self.n / total)
            self.even.append(-(-total // self.n) * self.n / total)
            self.over_cap += top > math.ceil((1 + self.epsilon) * total / self.n)


def arrivals(cfg: SimConfig, workload: Workload, now: int, placed: int, backlog: int) -> int:
    if cfg.queued_per_worker:
        room = cfg.queued_per_worker * cfg.workers - backlog
        return max(0, min(room, len(workload.lora_ids) - placed))
    return workload.per_tick[now]


def simulate(cfg: SimConfig, policy: Policy, workload: Workload, clock: SimClock) -> PolicyResult:
    workers = [
        SimWorker(
            wid,
            queues,
            cfg.slots,
            cfg.concurrency,
            round(cfg.load_cost * UNITS),
            UseCounts(cfg.use_halflife) if cfg.eviction == "uses" else None,
        )
        for wid, queues in zip(worker_ids(cfg), shard_queues(cfg), strict=True)
    ]
    snapshots = Snapshots(workers, cfg.heartbeat, clock)
    samples = Samples(cfg.workers, cfg.min_mean, cfg.epsilon)
    latencies: list[int] = []
    job = now = 0
    while job < len(workload.lora_ids):
        snapshots.tick(now)
        if now % cfg.refresh == 0:
            policy.update(snapshots.views(now))
        clock.at(now + 0.1)
        for _ in range(arrivals(cfg, workload, now, job, sum(w.backlog for w in workers))):
            lora_id = workload.lora_ids[job]
            workers[policy.pick(job, lora_id, f"j{job}")].enqueue(job, lora_id, now)
            job += 1
        samples.add([w.backlog for w in workers])
        serve(workers, now, clock, policy, latencies)
        now += 1
    ticks = now
    work = sum(w.work for w in workers)
    while any(w.backlog for w in workers):  # drain, so every job has a latency
        serve(workers, now, clock, policy, latencies)
        now += 1
    return summarise(policy, workload, workers, latencies, samples, work, (ticks, now))


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
    policy: Policy,
    workload: Workload,
    workers: list[SimWorker],
    latencies: list[int],
    samples: Samples,
    work: int,
    span: tuple[int, int],
) -> PolicyResult:
    """`span`: the ticks until the last job arrived, and until the last job was done."""
    ticks, finished = span
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
        max_mean_backlog_even=round(float(np.percentile(samples.even or [1.0], 99)), 3),
        over_cap_share=round(samples.over_cap / max(1, len(samples.ratios)), 4),
        balance_samples=round(len(samples.ratios) / ticks, 3),
        mean_backlog=round(samples.backlog_sum / ticks / len(workers), 2),
        utilisation=round(work / (ticks * len(workers) * UNITS), 3),
        jobs_per_tick=round(len(workload.lora_ids) / finished, 3),
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
        "least_loaded": lambda: LeastLoaded(cfg.workers),
    }
    return simulate(cfg, policies[name](), workload or make_workload(cfg), clock)


def run_policies(cfg: SimConfig) -> dict[str, PolicyResult]:
    """loraq (the real router), round-robin and hashing over one workload."""
    workload = make_workload(cfg)
    return {name: run_policy(cfg, name, workload) for name in ("loraq", "round_robin", "hashing")}


def run_regime(cfg: SimConfig, fresh: bool) -> dict[str, PolicyResult]:
    """Every policy on one workload: loraq, round-robin, hashing, least-loaded, loraq with exact
    views (`fresh`), and, when the workers evict by use counts, loraq and round-robin on workers
    with LRU slots (what the eviction policy alone is worth, and a stock setup)."""
    workload = make_workload(cfg)
    names = ("loraq", "round_robin", "hashing", "least_loaded")
    results = {name: run_policy(cfg, name, workload) for name in names}
    if fresh:
        results["loraq_fresh"] = run_policy(replace(cfg, heartbeat=0), "loraq", workload)
    if cfg.eviction != "lru":
        lru = replace(cfg, eviction="lru")
        results |= {
            f"{name}_lru": run_policy(lru, name, workload) for name in ("loraq", "round_robin")
        }
    return results
