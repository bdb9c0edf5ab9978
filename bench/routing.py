"""Routing simulator: the REAL `api.router.Router` against round-robin and plain hashing.

Why a simulator: adapter loads and backlog balance come from a feedback loop (the router places
jobs, workers' LRUs change, the next heartbeat shows new warm sets and backlogs) that a unit test
of `route()` cannot show, and the real stack is far too slow for 100k jobs. So the loop runs here
in discrete time over a seeded workload, and every placement of the "loraq" policy is a call of
`Router.route` on snapshots fed to `Router.update`, with `Router.complete` for each finished job,
as the gateway does (`api/routing_table.py`, `api/waiter.py`): nothing of the router is copied.

Model (one tick = the time a worker takes to serve one job; `tick_s` = 10 ms by default):
- The same jobs, in the same order, in two regimes. Open (plain names in the JSON): jobs arrive
  as a Poisson process at `utilisation` x the workers' job capacity (default 0.85: 6.8 jobs/tick
  for 8 workers); queues stay short (about 2 jobs per worker). Autoscaled (`autoscaled_` names):
  a closed loop that tops the workers' total backlog up to `--queued-per-worker` (default 32)
  jobs per worker every tick. That is where the Helm chart's KEDA scaler holds a loaded pool
  (replicas = ceil(queued jobs / `listLength` 32)): with less work it removes workers, with more
  it adds them. Adapters are Zipf(s) over `adapters` ids; `base_share` of jobs use the base
  model (lora_id None: never a load).
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
- Baselines through the same loop and the same workers: round-robin (job i -> worker i mod n),
  plain hashing (`stable_hash(lora_id) % n`; base jobs round-robin), neither bounded, and
  least-loaded (every job to the worker with the fewest jobs: the best balance there is); with
  `--eviction uses` (the default), also loraq and round-robin on workers with LRU slots
  (`loraq_lru`, `round_robin_lru`: the latter is a stock setup).

Metrics per policy:
- `loads_per_1000_jobs`: adapter loads per 1000 jobs (all jobs, base jobs included);
  `hit_rate` = 1 - loads / adapter jobs.
- `max_mean_backlog`: every tick, right after that tick's placements and before any service, take
  each worker's real backlog (queued + in service); over the ticks whose mean backlog is at least
  `min_mean` (2 jobs: below that one job more is already a ratio of 1.5; `balance_samples` says
  which share of ticks that leaves), the 99th percentile of max backlog / mean backlog
  (`..._mean`: the mean, `..._max`: the maximum). `..._even`: the same p99 had each sampled
  total been split as evenly as integers allow; no policy can do better. With 2 to 4 jobs per
  worker that is already far above 1.25 (17 jobs on 8 workers: 3 / 2.125 = 1.41).
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
- Loads floors, per 1000 jobs: `reference_static_...`, the workers' slots holding the most
  popular adapters for good (no policy that sees only past jobs does better: see
  `reference_static_loads`), and `reference_lookahead_...`, an idealised single cache that also
  sees the autoscaled regime's queued jobs ahead (`reference_lookahead_loads`); each also as a
  share of the open regime's round-robins' loads.

`--real` also runs the real stack on this machine (redis, gateway, 3 workers with 16 adapter slots,
300 jobs over 50 adapters) and reports the slot hit rate from the workers' heartbeats.

Last line of output: one JSON object (also written to bench/results/routing.json unless
`--no-write`).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from api.router import Router, WorkerView
from common import keys
from common.hashing import stable_hash
from common.settings import DEFAULT_MODEL_ID
from worker.eviction import UseCounts

if TYPE_CHECKING:
    from bench.routing_real import RealConfig

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
    # 0: jobs arrive as a Poisson process at `utilisation`. N: a closed loop, new jobs arrive
    # whenever the workers' total backlog is under N per worker (what KEDA keeps, see main).
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
            workers[policy.pick(job, lora_id, f"j{job}")].fifo.append((job, lora_id, now))
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
    """Every policy on one workload: `run_policies`, least-loaded, loraq with exact views
    (`fresh`), and, when the workers evict by use counts, loraq and round-robin on workers with
    LRU slots (what the eviction policy alone is worth, and a stock setup)."""
    workload = make_workload(cfg)
    results = run_policies(cfg) | {"least_loaded": run_policy(cfg, "least_loaded", workload)}
    if fresh:
        results["loraq_fresh"] = run_policy(replace(cfg, heartbeat=0), "loraq", workload)
    if cfg.eviction != "lru":
        lru = replace(cfg, eviction="lru")
        results |= {
            f"{name}_lru": run_policy(lru, name, workload) for name in ("loraq", "round_robin")
        }
    return results


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
    anything they reach."""
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
    names = ("adapters", "workers", "slots", "use_halflife", "jobs", "refresh", "heartbeat")
    for name in (*names, "shards", "seed"):
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
    """The loads floors (`reference_static_loads`, `reference_lookahead_loads`) per 1000 jobs,
    and as a share of the open regime's round-robins' loads."""
    workload = make_workload(cfg)
    floors = {
        "static": reference_static_loads(cfg, workload),
        "lookahead": reference_lookahead_loads(cfg, workload, window),
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
        "{reference_lookahead_window_jobs} jobs ahead)".format(**out)
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
