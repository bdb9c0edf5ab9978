"""The gateway's router (`api/placement.py`): where a job goes, and that bounded loads hold.

The router decides on loads = heartbeat backlog, corrected by its own placements after the
heartbeat and by completions of jobs the heartbeat still counted. Tests give views a `seen_at`
(when the heartbeat was taken: both `sampled_from` and `sampled_to`) and the router a clock that
moves on at every call, as `time.time` does.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import pytest

from api.placement import Route, Router, WorkerView
from common import keys
from common.hashing import stable_hash
from tests.constants import FAKE_MODEL

pytestmark = pytest.mark.unit

SEEN = 1000.0  # when the test heartbeats were taken
ROOT = Path(__file__).resolve().parents[2]


class Clock:
    """Starts just after `SEEN` and moves on a little at every call."""

    def __init__(self, now: float = SEEN + 1) -> None:
        self.now = now

    def __call__(self) -> float:
        self.now += 0.001
        return self.now


def queues_of(i: int) -> tuple[str, ...]:
    return (keys.shard_queue(FAKE_MODEL, 2 * i), keys.shard_queue(FAKE_MODEL, 2 * i + 1))


def view(
    i: int,
    backlog: int = 0,
    warm: Iterable[str] = (),
    queues: tuple[str, ...] | None = None,
    seen_at: float = SEEN,
) -> WorkerView:
    return WorkerView(
        f"w{i}", queues_of(i) if queues is None else queues, frozenset(warm), backlog, seen_at,
        seen_at,
    )  # fmt: skip


def router_with(views: list[WorkerView], epsilon: float = 0.25) -> Router:
    router = Router(FAKE_MODEL, epsilon, clock=Clock())
    router.update(views)
    return router


def home(lora_id: str, worker_ids: Iterable[str]) -> str:
    """The adapter's rendezvous-hash choice."""
    return max(worker_ids, key=lambda w: stable_hash(lora_id, w))


def cap(total: int, n: int, epsilon: float) -> int:
    return math.ceil((1 + epsilon) * (total + 1) / n)


def place(router: Router, lora_id: str | None, job_id: str) -> Route:
    """Route a job and publish it, as the gateway does."""
    route = router.route(lora_id, job_id)
    router.published(job_id)
    return route


def test_no_live_worker_goes_to_the_shared_queue() -> None:
    router = Router(FAKE_MODEL, clock=Clock())
    assert router.route("a", "j1") == Route(keys.model_queue(FAKE_MODEL), None, "no-worker")
    router.update([view(0, queues=())])  # alive but holding no shard: not a target
    assert router.route(None, "j2") == Route(keys.model_queue(FAKE_MODEL), None, "no-worker")


def test_a_warm_worker_under_the_cap_gets_its_adapters_jobs() -> None:
    ids = [f"w{i}" for i in range(4)]
    other = next(w for w in ids if w != home("x", ids))
    router = router_with([view(i, 10, warm=["x"] if f"w{i}" == other else []) for i in range(4)])
    route = router.route("x", "j1")
    assert (route.worker_id, route.reason) == (other, "warm")


def test_an_adapter_warm_on_several_workers_goes_to_the_least_loaded() -> None:
    ids = [f"w{i}" for i in range(4)]
    first = home("x", ids)
    spare = next(w for w in ids if w != first)
    backlogs = {w: 1 if w == spare else 4 for w in ids}
    views = [
        view(i, backlogs[w], warm=["x"] if w in (first, spare) else []) for i, w in enumerate(ids)
    ]
    router = router_with(views)
    routes = [router.route("x", f"j{n}") for n in range(4)]
    # The spare replica takes them at 1, 2, 3; at 4 it ties with the home, which comes first.
    assert [r.worker_id for r in routes] == [spare, spare, spare, first]
    assert {r.reason for r in routes} == {"warm"}


def test_a_warm_worker_at_the_cap_is_passed_over() -> None:
    ids = [f"w{i}" for i in range(4)]
    other = next(w for w in ids if w != home("x", ids))
    # cap = ceil(1.25 x (60 + 1) / 4) = 20: the warm worker, at 30, is over it
    views = [view(i, 30, warm=["x"]) if f"w{i}" == other else view(i, 10) for i in range(4)]
    route = router_with(views).route("x", "j1")
    assert (route.worker_id, route.reason) == (home("x", ids), "affinity")


def test_an_adapter_keeps_going_to_the_same_worker() -> None:
    router = router_with([view(i, 1000) for i in range(4)])
    ids = [f"w{i}" for i in range(4)]
    chosen: dict[int, str | None] = {}
    for n in range(3):
        for a in range(40):
            route = router.route(f"a{a}", f"j{n}-{a}")
            assert route.reason == "affinity"
            assert chosen.setdefault(a, route.worker_id) == route.worker_id == home(f"a{a}", ids)
    assert len(set(chosen.values())) == 4  # and adapters spread over the workers


@pytest.mark.parametrize("epsilon", [0.0, 0.25, 1.0])
def test_a_hot_adapter_is_bounded_and_spills(epsilon: float) -> None:
    backlogs = [0, 3, 7, 1]
    router = router_with([view(i, b) for i, b in enumerate(backlogs)], epsilon)
    load = {f"w{i}": b for i, b in enumerate(backlogs)}  # backlog + placed, counted here
    for n in range(400):
        limit = cap(sum(load.values()), len(load), epsilon)
        route = router.route("hot", f"j{n}")
        assert route.worker_id is not None
        load[route.worker_id] += 1
        assert load[route.worker_id] <= limit
        assert router.loads() == load
    assert sum(load.values()) == sum(backlogs) + 400
    assert max(load.values()) <= cap(sum(load.values()) - 1, len(load), epsilon)
    # It spilled: no worker may hold more than about (1 + eps) / n of it all.
    used = sum(load[w] > b for w, b in zip(load, backlogs, strict=True))
    assert used >= math.ceil(len(load) / (1 + epsilon))


def test_a_hot_adapter_fills_its_home_first() -> None:
    router = router_with([view(i, 0) for i in range(4)])
    first = Counter(router.route("hot", f"j{n}").worker_id for n in range(8))
    # cap after k placed: ceil(1.25 (k + 1) / 4); the home takes every job it may.
    assert first[home("hot", [f"w{i}" for i in range(4)])] == 3


def test_base_jobs_go_to_the_least_loaded_worker() -> None:
    router = router_with([view(0, 5), view(1, 2), view(2, 9)])
    routes = [router.route(None, f"j{n}") for n in range(3)]
    assert [r.worker_id for r in routes] == ["w1", "w1", "w1"]  # 2, 3, 4: still least loaded
    assert {r.reason for r in routes} == {"base"}
    assert router.route(None, "j3").worker_id in {"w0", "w1"}  # 5, 5, 9: a tie, either


def test_a_worker_without_queues_is_never_chosen() -> None:
    everything = [f"a{a}" for a in range(50)]
    idle = view(9, 0, warm=everything, queues=())  # least loaded, everything warm, no shards
    router = router_with([idle, view(0, 5), view(1, 5)])
    for n in range(300):
        lora_id = None if n % 5 == 0 else f"a{n % 50}"
        assert router.route(lora_id, f"j{n}").worker_id in {"w0", "w1"}


def test_routes_name_a_queue_of_the_chosen_worker() -> None:
    views = [view(i, i, warm=[f"a{i}"]) for i in range(5)]
    queues = {v.id: v.queues for v in views}
    router = router_with(views)
    used: set[str] = set()
    for n in range(500):
        route = router.route(None if n % 7 == 0 else f"a{n % 23}", f"j{n}")
        assert route.worker_id is not None
        assert route.queue in queues[route.worker_id]
        used.add(route.queue)
    assert keys.model_queue(FAKE_MODEL) not in used
    assert len(used) > len(views)  # both shards of a worker are used (by adapter hash)


def test_a_newer_heartbeat_replaces_the_placements_it_counts() -> None:
    clock = Clock()
    router = Router(FAKE_MODEL, clock=clock)
    router.update([view(0, 0), view(1, 0)])
    for n in range(10):
        place(router, "hot", f"j{n}")
    assert sum(router.loads().values()) == 10
    heartbeat = clock()  # the workers' backlogs now count those 10 jobs (some already served)
    router.update([view(0, 3, seen_at=heartbeat), view(1, 4, seen_at=heartbeat)])
    assert router.loads() == {"w0": 3, "w1": 4}
    route = place(router, "hot", "j10")  # placed after that heartbeat: counted again
    assert route.worker_id is not None
    assert router.loads()[route.worker_id] == {"w0": 3, "w1": 4}[route.worker_id] + 1


def test_placements_newer_than_the_heartbeat_survive_an_update() -> None:
    router = router_with([view(0, 0)])
    place(router, "x", "j1")
    router.update([view(0, 0)])  # same old heartbeat (seen_at before the placement)
    assert router.loads() == {"w0": 1}


def test_completions_correct_the_heartbeat() -> None:
    clock = Clock()
    router = Router(FAKE_MODEL, clock=clock)
    router.update([view(0, 0)])
    place(router, "x", "before")
    heartbeat = clock()
    router.update([view(0, 1, seen_at=heartbeat)])  # counts "before"
    place(router, "x", "after")
    assert router.loads() == {"w0": 2}
    router.complete("after")  # placed after the heartbeat: its placement goes
    assert router.loads() == {"w0": 1}
    router.complete("before")  # counted by the heartbeat: comes off the backlog
    assert router.loads() == {"w0": 0}
    router.complete("unknown")  # placed by another gateway, or already forgotten
    assert router.loads() == {"w0": 0}


def test_a_completion_heard_before_the_heartbeat_that_counts_the_job() -> None:
    clock = Clock()
    router = Router(FAKE_MODEL, clock=clock)
    router.update([view(0, 0)])
    place(router, "x", "j1")  # placed after the heartbeat the router holds
    heartbeat = clock()  # the worker's next heartbeat counts j1 (backlog 1) ...
    router.complete("j1")  # ... j1 finishes; the gateway hears it before its next refresh
    router.update([view(0, 1, seen_at=heartbeat)])
    assert router.loads() == {"w0": 0}  # the router says 1: a job that is gone


def test_a_job_counts_from_its_publish_not_its_route() -> None:
    """A heartbeat taken while a routed job's message is still being published does not count
    the job: the router must, or a burst lands above the cap."""
    clock = Clock()
    router = Router(FAKE_MODEL, clock=clock)
    router.update([view(0, 0)])
    router.route("x", "j1")
    heartbeat = clock()  # j1 is not on its queue yet: backlog 0
    router.update([view(0, 0, seen_at=heartbeat)])
    assert router.loads() == {"w0": 1}
    router.published("j1")  # on the queue after that heartbeat
    router.update([view(0, 0, seen_at=heartbeat)])
    assert router.loads() == {"w0": 1}
    heartbeat = clock()
    router.update([view(0, 1, seen_at=heartbeat)])  # this one counts j1
    assert router.loads() == {"w0": 1}


def test_a_completion_the_heartbeat_may_count_is_not_taken_off() -> None:
    """Known only to within [from, to], a heartbeat may or may not count a job that finished in
    that interval: the router keeps counting it (erring towards busy) until a heartbeat surely
    taken after it; a job that finished after `to` is surely counted, and comes off."""
    clock = Clock()
    router = Router(FAKE_MODEL, clock=clock)
    router.update([view(0, 0)])
    place(router, "x", "j1")
    place(router, "x", "j2")
    sampled_from = clock()
    router.complete("j1")
    sampled_to = clock()
    taken = WorkerView("w0", queues_of(0), frozenset(), 2, sampled_from, sampled_to)
    router.update([taken])  # it counted both
    assert router.loads() == {"w0": 2}
    router.complete("j2")
    assert router.loads() == {"w0": 1}
    later = clock()
    router.update([view(0, 0, seen_at=later)])
    assert router.loads() == {"w0": 0}


def test_a_job_whose_publish_failed_comes_off() -> None:
    router = router_with([view(0, 0)])
    router.route("x", "j1")
    router.complete("j1")  # the gateway gave up publishing it: it will never run
    assert router.loads() == {"w0": 0}
    router.update([view(0, 0)])
    assert router.loads() == {"w0": 0}


_ROUTES_SCRIPT = """
import json, sys
from api.placement import Router, WorkerView
from common import keys
model = sys.argv[1]
router = Router(model, clock=lambda: 2000.0)
queues = lambda i: (keys.shard_queue(model, 2 * i), keys.shard_queue(model, 2 * i + 1))
router.update([WorkerView(f"w{i}", queues(i), frozenset(), 1000, 1e3, 1e3) for i in range(5)])
print(json.dumps([router.route(f"a{a}", f"j{a}").queue for a in range(30)]))
"""


def test_routes_are_the_same_in_every_process() -> None:
    """Gateways (and restarts) must agree: the router hashes with stable_hash, not hash()."""
    outputs = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        run = subprocess.run(
            [sys.executable, "-c", _ROUTES_SCRIPT, FAKE_MODEL],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        outputs.append(json.loads(run.stdout))
    router = Router(FAKE_MODEL, clock=lambda: 2000.0)
    router.update([view(i, 1000, seen_at=1000.0) for i in range(5)])
    here = [router.route(f"a{a}", f"j{a}").queue for a in range(30)]
    assert outputs[0] == outputs[1] == here


def test_the_simulator_beats_round_robin_and_keeps_balance() -> None:
    """The routing simulator on a tiny shape, with views read at each update (exact backlogs)."""
    from bench.routing_sim import SimConfig, run_policies

    cfg = SimConfig(adapters=50, workers=4, slots=8, jobs=5000, shards=8, heartbeat=0)
    results = run_policies(cfg)
    loraq, rr, hashing = results["loraq"], results["round_robin"], results["hashing"]
    assert loraq.cap_violations == 0
    assert loraq.loads_per_1000_jobs < 0.7 * rr.loads_per_1000_jobs
    assert loraq.max_mean_backlog < hashing.max_mean_backlog
    # Real backlogs stay under the router's cap (ceil(1.25 x mean) at mean >= 2: ratio <= 1.78)
    assert loraq.max_mean_backlog <= 1.8
    assert loraq.over_cap_share <= 0.05 < hashing.over_cap_share
    assert loraq.p99_latency_ticks < rr.p99_latency_ticks


def test_affinity_queue_is_a_hint_that_places_nothing() -> None:
    """Where an adapter's jobs would go when loads allow (its warm worker, else its rendezvous
    choice), for a prefetch: nothing is counted against any worker."""
    router = router_with([view(1, queues=("q1",)), view(2, queues=("q2",), warm={"hot"})])
    before = router.loads()
    assert router.affinity_queue("hot") == "q2"
    cold = router.affinity_queue("cold")
    assert cold == router.route("cold", "j1").queue
    router.complete("j1")
    assert router.loads() == before
    assert Router(FAKE_MODEL, clock=Clock()).affinity_queue("x") == keys.model_queue(FAKE_MODEL)
