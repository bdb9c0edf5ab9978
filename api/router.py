"""Which queue a job goes to: adapter affinity with bounded loads.

A job for adapter X goes to a live worker that has X warm if one is under the load cap; else to
X's rendezvous-hash choice among live workers, walking down that worker order past any worker at
the cap (consistent hashing with bounded loads). The cap is `ceil((1 + epsilon) x mean load)`
counting the job being placed, so no worker is sent work above (1 + epsilon) x the mean; a hot
adapter spills to its next workers, which then warm it too. Base-model jobs go to the least loaded
worker. With no live worker, jobs go to the model's shared queue, which every worker consumes.

A worker is reached through the shard queues it leases, never a per-worker queue: if it dies,
its shards (and the jobs in them) pass to other workers when its leases expire.

The router is plain code over snapshots (`WorkerView`), so the gateway and the routing simulator
(`bench/routing.py`) run exactly this. Between snapshots it counts what it placed itself, so a
burst between two heartbeats does not all land on one worker.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from common import keys
from common.hashing import stable_hash


@dataclass(frozen=True)
class WorkerView:
    id: str
    queues: tuple[str, ...]  # the shard queues it consumes now
    warm: frozenset[str]  # adapters in its device slots
    backlog: int  # jobs queued for it or in flight on it


@dataclass(frozen=True)
class Route:
    queue: str
    worker_id: str | None
    reason: str  # warm | affinity | spill | base | no-worker


class Router:
    def __init__(self, model_id: str, epsilon: float = 0.25) -> None:
        self.model_id = model_id
        self.epsilon = epsilon
        self._workers: list[WorkerView] = []
        self._placed: dict[str, int] = {}

    def update(self, workers: Sequence[WorkerView]) -> None:
        """A fresh snapshot; its backlogs already count what was placed before it."""
        self._workers = [w for w in workers if w.queues]
        self._placed = {}

    def load(self, worker_id: str) -> int:
        view = next(w for w in self._workers if w.id == worker_id)
        return view.backlog + self._placed.get(worker_id, 0)

    def route(self, lora_id: str | None, job_id: str) -> Route:
        if not self._workers:
            return Route(keys.model_queue(self.model_id), None, "no-worker")
        loads = {w.id: w.backlog + self._placed.get(w.id, 0) for w in self._workers}
        cap = math.ceil((1 + self.epsilon) * (sum(loads.values()) + 1) / len(loads))
        if lora_id is None:
            worker = min(self._workers, key=lambda w: (loads[w.id], stable_hash(job_id, w.id)))
            return self._place(worker, job_id, "base")
        order = sorted(self._workers, key=lambda w: stable_hash(lora_id, w.id), reverse=True)
        for worker in order:
            if lora_id in worker.warm and loads[worker.id] + 1 <= cap:
                return self._place(worker, lora_id, "warm")
        for rank, worker in enumerate(order):
            if loads[worker.id] + 1 <= cap:
                return self._place(worker, lora_id, "affinity" if rank == 0 else "spill")
        raise AssertionError("bounded loads: the least loaded worker is always under the cap")

    def _place(self, worker: WorkerView, key: str, reason: str) -> Route:
        self._placed[worker.id] = self._placed.get(worker.id, 0) + 1
        queue = worker.queues[stable_hash(key) % len(worker.queues)]
        return Route(queue, worker.id, reason)
