"""Which queue a job goes to: adapter affinity with bounded loads.

A job for adapter X goes to the least loaded live worker that has X warm, if one is under the
load cap (so the load of an adapter warm on several workers spreads over them, and leaves room
on each for the adapters only it has warm); else to X's rendezvous-hash choice among live
workers, walking down that worker order past any worker at the cap (consistent hashing with
bounded loads). The cap is `ceil((1 + epsilon) x mean load)` counting the job being placed, so
no worker is sent work above (1 + epsilon) x the mean; a hot adapter spills to its next workers,
which then warm it too. Base-model jobs go to the least loaded worker. With no live worker, jobs
go to the model's shared queue, which every worker consumes.

A worker is reached through the shard queues it leases, never a per-worker queue: if it dies,
its shards (and the jobs in them) pass to other workers when its leases expire.

The router is plain code over snapshots (`WorkerView`), so the gateway and the routing simulator
(`bench/routing_sim.py`) run exactly this. Heartbeats are a little old, so the router corrects them
with what it saw itself: a job published after a worker's heartbeat was taken adds to that
worker's load until the job completes; a job published before it that completed after it comes
off. A burst between two heartbeats then does not all land on one worker, and a worker that just
finished is not mistaken for a busy one. A job counts from when its message is on the queue
(`published`), not from when it was routed: a heartbeat taken between the two does not count it,
and under a burst many publishes are in flight at once. When a heartbeat was taken is known only
to within an interval on the router's own clock (`sampled_from`, `sampled_to`: the gateway maps
the Redis clock onto its own, so clock skew between hosts does not matter); where the interval
leaves it open whether the heartbeat counts a job, the router counts the job: it errs towards
thinking a worker busier than it is. Routing a job costs O(workers); a snapshot costs O(jobs in
flight).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from common import keys
from common.hashing import stable_hash

#: Placements are remembered this long at most (a completion notice can be missed).
PLACEMENT_MEMORY_S = 600.0
#: The publish time of a placement still being published: later than any heartbeat, so every
#: heartbeat's backlog is taken to leave it out.
UNPUBLISHED = math.inf


@dataclass(frozen=True)
class WorkerView:
    id: str
    queues: tuple[str, ...]  # the shard queues it consumes now
    warm: frozenset[str]  # adapters in its device slots
    backlog: int  # jobs queued for it or in flight on it
    sampled_from: float  # on the router's clock, `backlog` was taken no earlier than this
    sampled_to: float  # and no later than this


@dataclass(frozen=True)
class Route:
    queue: str
    worker_id: str | None
    reason: str  # warm | affinity | spill | base | no-worker


@dataclass
class _Placed:
    """A job this router placed and has not heard finish."""

    worker: str
    published: float  # when its message was on the queue (UNPUBLISHED until then)
    routed: float


@dataclass(frozen=True)
class _Finished:
    """A finished job that a heartbeat taken before `done` may still count."""

    published: float
    done: float


class Router:
    def __init__(
        self, model_id: str, epsilon: float = 0.25, clock: Callable[[], float] = time.time
    ) -> None:
        self.model_id = model_id
        self.epsilon = epsilon
        self._clock = clock
        self._workers: list[WorkerView] = []
        self._seen: dict[str, WorkerView] = {}
        self._outstanding: dict[str, _Placed] = {}  # by job id
        self._after: dict[str, int] = {}  # per worker: outstanding jobs its heartbeat may not count
        self._finished: dict[str, list[_Finished]] = {}  # per worker
        self._done_counted: dict[str, int] = {}  # per worker: finished jobs its heartbeat counts

    def update(self, workers: Sequence[WorkerView]) -> None:
        """A fresh snapshot of the live workers."""
        self._workers = [w for w in workers if w.queues]
        seen = self._seen = {w.id: w for w in self._workers}
        horizon = self._clock() - PLACEMENT_MEMORY_S
        self._outstanding = {
            job: placed
            for job, placed in self._outstanding.items()
            if placed.worker in seen and placed.routed > horizon
        }
        self._after = dict.fromkeys(seen, 0)
        for placed in self._outstanding.values():
            if placed.published > seen[placed.worker].sampled_from:
                self._after[placed.worker] += 1
        # Completions a heartbeat may still count: dropped once one was surely taken after them.
        self._finished = {
            wid: [f for f in finished if f.done >= seen[wid].sampled_from and f.done > horizon]
            for wid, finished in self._finished.items()
            if wid in seen
        }
        self._done_counted = {
            wid: sum(
                1
                for f in finished
                if f.published <= seen[wid].sampled_from and f.done > seen[wid].sampled_to
            )
            for wid, finished in self._finished.items()
        }

    def published(self, job_id: str) -> None:
        """A job this router placed is on its queue now: heartbeats taken from here on count it."""
        placed = self._outstanding.get(job_id)
        if placed is not None:
            placed.published = self._clock()

    def complete(self, job_id: str) -> None:
        """A job this router placed has finished (the gateway hears every job's completion),
        or will never run (its publish failed)."""
        placed = self._outstanding.pop(job_id, None)
        if placed is None or placed.worker not in self._seen:
            return
        wid = placed.worker
        now = self._clock()
        if placed.published > self._seen[wid].sampled_from:
            self._after[wid] -= 1
        else:  # the heartbeat in hand was taken before now, so it still counts this job
            self._done_counted[wid] = self._done_counted.get(wid, 0) + 1
        # A later heartbeat taken before `now` still counts this job: remember when it ended.
        self._finished.setdefault(wid, []).append(_Finished(placed.published, now))

    def loads(self) -> dict[str, int]:
        return {
            w.id: max(0, w.backlog - self._done_counted.get(w.id, 0)) + self._after[w.id]
            for w in self._workers
        }

    def route(self, lora_id: str | None, job_id: str) -> Route:
        if not self._workers:
            return Route(keys.model_queue(self.model_id), None, "no-worker")
        loads = self.loads()
        cap = math.ceil((1 + self.epsilon) * (sum(loads.values()) + 1) / len(loads))
        if lora_id is None:
            worker = min(self._workers, key=lambda w: (loads[w.id], stable_hash(job_id, w.id)))
            return self._place(worker, job_id, job_id, "base")
        order = sorted(self._workers, key=lambda w: stable_hash(lora_id, w.id), reverse=True)
        warm = [w for w in order if lora_id in w.warm and loads[w.id] + 1 <= cap]
        if warm:
            return self._place(min(warm, key=lambda w: loads[w.id]), job_id, lora_id, "warm")
        for rank, worker in enumerate(order):
            if loads[worker.id] + 1 <= cap:
                reason = "affinity" if rank == 0 else "spill"
                return self._place(worker, job_id, lora_id, reason)
        raise AssertionError("bounded loads: the least loaded worker is always under the cap")

    def affinity_queue(self, lora_id: str) -> str:
        """Where an adapter's jobs go when loads allow: its warm worker, else its rendezvous
        choice. For hints (a prefetch), so nothing is counted as placed."""
        if not self._workers:
            return keys.model_queue(self.model_id)
        candidates = [w for w in self._workers if lora_id in w.warm] or self._workers
        worker = max(candidates, key=lambda w: stable_hash(lora_id, w.id))
        return worker.queues[stable_hash(lora_id) % len(worker.queues)]

    def _place(self, worker: WorkerView, job_id: str, key: str, reason: str) -> Route:
        self._outstanding[job_id] = _Placed(worker.id, UNPUBLISHED, self._clock())
        self._after[worker.id] += 1
        queue = worker.queues[stable_hash(key) % len(worker.queues)]
        return Route(queue, worker.id, reason)
