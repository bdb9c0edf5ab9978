"""The routing benchmark's regimes and yardsticks (`bench/routing_sim.py`, `bench/routing.py`):
the autoscaled closed loop, the least-loaded policy, the even-split ratio and the loads floors.
The router itself is tested in `test_router.py`."""

from __future__ import annotations

from dataclasses import replace

import pytest

from bench.routing import reference_lookahead_loads, reference_static_loads
from bench.routing_sim import (
    LeastLoaded,
    SimClock,
    SimConfig,
    SimWorker,
    Workload,
    make_workload,
    run_policy,
    simulate,
)
from common.settings import AdapterSettings
from worker.eviction import UseCounts

pytestmark = pytest.mark.unit

HALFLIFE = AdapterSettings().use_halflife
TINY = SimConfig(adapters=50, workers=4, slots=8, jobs=4000, shards=8)


class Recording(LeastLoaded):
    """Least-loaded, remembering the total backlog before each placement."""

    def __init__(self, n: int) -> None:
        super().__init__(n)
        self.totals: list[int] = []

    def pick(self, index: int, lora_id: str | None, job_id: str) -> int:
        self.totals.append(sum(self.backlogs))
        return super().pick(index, lora_id, job_id)


def test_the_autoscaled_regime_keeps_the_backlog_at_its_target() -> None:
    cfg = replace(TINY, queued_per_worker=6)
    policy = Recording(cfg.workers)
    result = simulate(cfg, policy, make_workload(cfg), SimClock(cfg.tick_s))
    target = cfg.queued_per_worker * cfg.workers
    assert max(policy.totals) < target  # a job arrives only into room under the target
    assert result.jobs == cfg.jobs
    assert result.mean_backlog == pytest.approx(cfg.queued_per_worker, abs=0.05)
    assert result.balance_samples == 1.0  # the mean is always above min_mean


def test_least_loaded_balances_as_well_as_integers_allow() -> None:
    result = run_policy(TINY, "least_loaded")
    assert result.max_mean_backlog >= result.max_mean_backlog_even  # no split beats an even one
    assert result.max_mean_backlog <= run_policy(TINY, "loraq").max_mean_backlog
    assert run_policy(replace(TINY, queued_per_worker=6), "least_loaded").max_mean_backlog == 1.0


def test_small_backlogs_miss_1_25_even_when_split_evenly() -> None:
    """At 2 to 4 jobs per worker, integers alone put the p99 ratio above 1.25."""
    result = run_policy(TINY, "loraq")
    assert result.max_mean_backlog_even > 1.25
    assert result.max_mean_backlog >= result.max_mean_backlog_even


def test_loraq_meets_its_balance_bound_when_backlogs_are_deep() -> None:
    cfg = replace(TINY, queued_per_worker=16, jobs=8000)
    loraq, round_robin = run_policy(cfg, "loraq"), run_policy(cfg, "round_robin")
    assert loraq.max_mean_backlog <= 1.25 + 1 / 16  # the cap's ceil: one job over 1.25 x mean
    assert loraq.cap_violations == 0
    assert loraq.loads < round_robin.loads


def test_no_policy_loads_less_than_the_static_floor() -> None:
    workload = make_workload(TINY)
    static = reference_static_loads(TINY, workload)
    for policy in ("loraq", "round_robin", "hashing", "least_loaded"):
        assert run_policy(TINY, policy, workload).loads_per_1000_jobs >= static


def test_the_floors_on_a_hand_made_sequence() -> None:
    """Two slots; a is the most used adapter, c and b tie. Held for good, a and c leave both b
    jobs as loads. Seeing no job ahead, b's first job evicts c (less used than a), and c's
    return evicts b again. Seeing two jobs ahead, b's first job evicts a, needed no more."""
    cfg = replace(TINY, workers=1, slots=2)
    ids: list[str | None] = ["a", "a", "a", "c", "b", "c", "b"]
    workload = Workload(ids, [len(ids)])
    per_1000 = [round(1000 * loads / len(ids), 2) for loads in range(6)]
    assert reference_static_loads(cfg, workload) == per_1000[4]  # a, c, b, b
    assert reference_lookahead_loads(cfg, workload, 0) == per_1000[5]  # a, c, b, c, b
    assert reference_lookahead_loads(cfg, workload, 2) == per_1000[3]  # a, c, b


def test_the_clairvoyant_floor_evicts_the_adapter_needed_last() -> None:
    """Two slots, a b c a b c. Seeing every job ahead, c evicts b (needed after a) and b's
    return evicts a (needed no more): 4 loads. Seeing none, popularity ties and c evicts a,
    whose return evicts b, whose return evicts c: 6 loads."""
    cfg = replace(TINY, workers=1, slots=2)
    ids: list[str | None] = ["a", "b", "c", "a", "b", "c"]
    workload = Workload(ids, [len(ids)])
    per_1000 = [round(1000 * loads / len(ids), 2) for loads in range(7)]
    assert reference_lookahead_loads(cfg, workload, len(ids)) == per_1000[4]
    assert reference_lookahead_loads(cfg, workload, 0) == per_1000[6]


def test_no_policy_loads_less_than_the_clairvoyant_floor() -> None:
    workload = make_workload(TINY)
    clairvoyant = reference_lookahead_loads(TINY, workload, len(workload.lora_ids))
    assert clairvoyant <= reference_lookahead_loads(TINY, workload, 8 * TINY.workers)
    assert clairvoyant <= reference_static_loads(TINY, workload)
    for policy in ("loraq", "round_robin", "hashing", "least_loaded"):
        assert run_policy(TINY, policy, workload).loads_per_1000_jobs >= clairvoyant


def test_a_worker_leases_the_adapters_of_the_jobs_it_holds() -> None:
    """Two slots, three task threads: a and b are taken and leased; c waits in the queue, since
    every slot is leased, until a is done and its slot can go."""
    worker = SimWorker("w0", (), slots=2, concurrency=3, load_units=0, uses=UseCounts(HALFLIFE))
    for job, lora_id in enumerate(["a", "b", "c"]):
        worker.enqueue(job, lora_id, now=0)
    assert (len(worker.held), len(worker.queued), worker.loads) == (2, 1, 2)
    done: list[tuple[int, int]] = []
    worker.step(0, done)  # one job's service per tick
    assert done == [(0, 1)]
    assert list(worker.lru) == ["b", "c"]
    assert (len(worker.held), len(worker.queued), worker.loads) == (2, 0, 3)


def test_a_held_jobs_adapter_is_not_evicted_for_a_less_used_one() -> None:
    """One thread: b (used once) is the least used when c comes, so c takes its slot. With a
    second thread holding the next b job, b is leased and the more used a must go instead."""
    for concurrency, evicted in ((1, "b"), (2, "a")):
        worker = SimWorker("w0", (), slots=2, concurrency=concurrency, load_units=0,
                           uses=UseCounts(HALFLIFE))  # fmt: skip
        for job, lora_id in enumerate(["a", "a", "b", "c", "b"]):
            worker.enqueue(job, lora_id, now=0)
        done: list[tuple[int, int]] = []
        for tick in range(3):  # a, a and b done, c taken
            worker.step(tick, done)
        assert evicted not in worker.lru, concurrency
