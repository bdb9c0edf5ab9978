"""Shard leases: which worker consumes which of a model's shard queues.

On every heartbeat a worker renews the leases it holds, takes free shards up to its share
(`ceil(shards / live workers)`, preferring shards by rendezvous hash so assignments are stable),
also takes any free shard that no other live worker needs, and gives back shards above its share
when none is free (so a new worker gets some). A lease is a Redis key with a TTL: a dead worker's
shards are free within one `lease_ttl_s`, and the next heartbeat of a live worker takes them, so
every shard queue that holds jobs has a live consumer within one lease TTL plus one heartbeat. A
graceful shutdown releases its leases at once.

What changed goes to `on_change(added, removed)` (queue names), which points the Celery consumer
at them. For a moment two workers may both consume a shard that changed hands; that is harmless,
since the broker hands each message to one consumer.

Celery fixes a worker's queues at start (`-Q`); `QueueControl` is the bootstep that hands over the
consumer so queues can be added and cancelled while it runs. Calls from other threads (the
heartbeat) are scheduled onto the consumer's own event loop with `call_soon`, since kombu's
consumer is not thread-safe. Changes asked for before the consumer exists are applied when it
starts.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import redis
from celery import bootsteps

from common import keys
from common.hashing import stable_hash
from common.redis_values import RELEASE_IF_HOLDER, RENEW_IF_HOLDER

log = logging.getLogger(__name__)


class ShardLeases:
    def __init__(
        self,
        client: redis.Redis,
        model_id: str,
        worker_id: str,
        shards: int,
        ttl_s: float,
        on_change: Callable[[set[str], set[str]], None],
    ) -> None:
        self._r = client
        self._model = model_id
        self._me = worker_id
        self._ttl_ms = int(ttl_s * 1000)
        self._on_change = on_change
        self._renew = client.register_script(RENEW_IF_HOLDER)
        self._release = client.register_script(RELEASE_IF_HOLDER)
        self._order = sorted(
            range(shards), key=lambda s: stable_hash(str(s), worker_id), reverse=True
        )
        self.held: set[int] = set()

    def queues(self) -> list[str]:
        return [keys.shard_queue(self._model, s) for s in sorted(self.held)]

    def tick(self, live: Sequence[str]) -> None:
        """One round over the live workers of this model (ids, this one included)."""
        before = set(self.held)
        for shard in list(self.held):
            renewed = self._renew(keys=[self._key(shard)], args=[self._me, self._ttl_ms])
            if not renewed:
                log.warning("lost the lease on shard %d of %s", shard, self._model)
                self.held.discard(shard)
        others = [w for w in live if w != self._me]
        share = math.ceil(len(self._order) / (len(others) + 1))
        holders = self._r.mget([self._key(s) for s in self._order])
        counts = Counter(h.decode() if isinstance(h, bytes) else h for h in holders if h)
        free = [s for s, holder in zip(self._order, holders, strict=True) if holder is None]
        for shard in free:
            nobody_needs_it = all(counts[w] >= share for w in others)
            if (len(self.held) < share or nobody_needs_it) and self._acquire(shard):
                counts[self._me] += 1
        if not free and len(self.held) > share and others:
            surplus = [s for s in reversed(self._order) if s in self.held][: len(self.held) - share]
            self._give_back(surplus)
        self._report(before)

    def release_all(self) -> None:
        """Graceful shutdown: free every shard for the other workers now, not at TTL expiry."""
        before = set(self.held)
        self._give_back(list(self.held))
        self._report(before)

    def _key(self, shard: int) -> str:
        return keys.lease(self._model, shard)

    def _acquire(self, shard: int) -> bool:
        if self._r.set(self._key(shard), self._me, nx=True, px=self._ttl_ms):
            self.held.add(shard)
            return True
        return False

    def _give_back(self, shards: list[int]) -> None:
        for shard in shards:
            self.held.discard(shard)
            self._release(keys=[self._key(shard)], args=[self._me])

    def _report(self, before: set[int]) -> None:
        added = {keys.shard_queue(self._model, s) for s in self.held - before}
        removed = {keys.shard_queue(self._model, s) for s in before - self.held}
        if added or removed:
            self._on_change(added, removed)


class QueueControl:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._consumer: Any = None
        self._wanted: set[str] = set()

    def change(self, added: set[str], removed: set[str]) -> None:
        with self._lock:
            self._wanted = (self._wanted | added) - removed
            consumer = self._consumer
        if consumer is None:
            return
        for queue in sorted(added):
            consumer.call_soon(consumer.add_task_queue, queue)
        for queue in sorted(removed):
            consumer.call_soon(consumer.cancel_task_queue, queue)

    def attach(self, consumer: Any) -> None:
        with self._lock:
            self._consumer = consumer
            wanted = set(self._wanted)
        for queue in sorted(wanted):
            consumer.add_task_queue(queue)
        log.info("consuming shard queues %s", sorted(wanted))

    def bootstep(self) -> type[bootsteps.StartStopStep]:
        control = self

        class AttachQueueControl(bootsteps.StartStopStep):  # type: ignore[misc]
            requires = {"celery.worker.consumer.tasks:Tasks"}

            def start(self, c: Any) -> None:
                control.attach(c)

        return AttachQueueControl
