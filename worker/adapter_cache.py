"""Warm adapters in three tiers: device slots, a CPU tier, and the disk (sources cache there).

`acquire(lora_id)` returns a lease on a device slot holding that adapter; the slot cannot be
evicted or overwritten until the lease is released, so a batch never runs with weights swapped
under it. Loading (disk → CPU → slot) runs in the acquiring task thread, never in the batch
thread, so batches for other adapters keep running while one loads. Concurrent first uses of the
same adapter share one load: the first caller loads, the others wait on its future; every waiter
of a failed load gets the same error. A refusal (`ADAPTER_*`) is remembered by the adapter's content
hash (`Refusals`), so a broken adapter is read but not validated again on every job, and fixing its
files lifts it at once; other failures (a source down, a failed slot write) are not remembered.

A slot is taken from the least used unleased adapter of late, the least recent among equals
(`worker.eviction`); the CPU tier, a victim cache for slots, is plain LRU. Adapters named in
`adapters.pinned` (and registry adapters pinned over the API, `worker.registry_sync`) are loaded
and never leave their slot until unpinned; `prefetch` loads into the CPU tier only. `drop`
forgets a deleted adapter: its slot is reused first, at once or when its last lease ends.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from common import metrics
from common.adapter_check import AdapterRules, read_files
from common.errors import AdapterInvalid
from worker.adapter_files import build_adapter
from worker.engine.lora import AdapterWeights
from worker.engine.types import BaseModelInfo
from worker.eviction import UseCounts


class SlotWriter(Protocol):
    def base_model_info(self) -> BaseModelInfo: ...

    def write_slot(self, slot: int, weights: AdapterWeights) -> None: ...


@dataclass(frozen=True)
class Lease:
    lora_id: str
    slot: int
    content_hash: str


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    loads: int = 0
    evictions: int = 0


class Refusals:
    """Adapters refused of late, by (adapter id, content hash): at most `capacity`, each for
    `ttl_s`. Holds the error's class and message, raised anew each time (one exception object
    raised again and again would grow its traceback)."""

    def __init__(
        self,
        capacity: int = 256,
        ttl_s: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._capacity, self._ttl_s, self._clock = capacity, ttl_s, clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[Hashable, tuple[float, type[AdapterInvalid], str]] = (
            OrderedDict()
        )

    def check(self, key: Hashable) -> None:
        """Raise the remembered refusal of `key`, if any."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return
            expires, kind, message = entry
            if self._clock() >= expires:
                del self._entries[key]
                return
        raise kind(message)

    def add(self, key: Hashable, error: AdapterInvalid) -> None:
        with self._lock:
            self._entries[key] = (self._clock() + self._ttl_s, type(error), error.message)
            self._entries.move_to_end(key)
            while len(self._entries) > self._capacity:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


@dataclass
class _Slot:
    lora_id: str | None = None
    content_hash: str = ""
    leases: int = 0
    ready: bool = False
    error: BaseException | None = None


class AdapterCache:
    def __init__(
        self,
        fetch: Callable[[str], Path],
        engine: SlotWriter,
        rules: AdapterRules,
        n_slots: int,
        cpu_capacity: int,
        *,
        use_halflife: int,
        pin_memory: bool = False,
        refusals: Refusals | None = None,
        on_load: Callable[[str], None] | None = None,
    ) -> None:
        self._fetch = fetch
        self._on_load = on_load
        self._engine = engine
        self._rules = rules
        self._cpu_capacity = cpu_capacity
        self._pin_memory = pin_memory
        self._lock = threading.Condition()
        self._slots = [_Slot() for _ in range(n_slots)]
        self._slot_of: dict[str, int] = {}
        self._lru: OrderedDict[int, None] = OrderedDict((i, None) for i in range(n_slots))
        self._cpu: OrderedDict[str, AdapterWeights] = OrderedDict()
        self._loading: dict[str, Future[AdapterWeights]] = {}
        self._pinned: set[str] = set()
        self._uses = UseCounts(use_halflife)
        self._refusals = refusals if refusals is not None else Refusals()
        self.stats = CacheStats()

    def pin(self, lora_id: str) -> None:
        """Load now and keep in a slot for good."""
        lease = self.acquire(lora_id)
        with self._lock:
            self._pinned.add(lora_id)
        self.release(lease)

    def unpin(self, lora_id: str) -> None:
        """Back to an ordinary warm adapter, evicted like any other."""
        with self._lock:
            self._pinned.discard(lora_id)
            self._lock.notify_all()

    def drop(self, lora_id: str) -> None:
        """Forget the adapter (it was deleted): out of the CPU tier now, and its slot no longer
        found by its id, so it is the first to be reused once no lease holds it."""
        with self._lock:
            self._pinned.discard(lora_id)
            self._cpu.pop(lora_id, None)
            slot = self._slot_of.pop(lora_id, None)
            if slot is not None:
                self._lru.move_to_end(slot, last=False)
                if self._slots[slot].leases == 0:
                    self._slots[slot] = _Slot()
            self._lock.notify_all()

    def prefetch(self, lora_id: str) -> None:
        """Into the CPU tier ahead of its first job (a batch names its adapters before its
        chunks arrive): fetched from its source, read and validated now, so the job pays a
        slot write only. Takes no slot, so it evicts nothing warm."""
        with self._lock:
            if lora_id in self._slot_of or lora_id in self._cpu:
                return
        self._weights(lora_id, None)

    def warm(self) -> list[str]:
        with self._lock:
            return [
                s.lora_id
                for i, s in enumerate(self._slots)
                if s.lora_id is not None and s.ready and self._slot_of.get(s.lora_id) == i
            ]

    def free_slots(self) -> int:
        with self._lock:
            return sum(1 for s in self._slots if s.leases == 0 and s.lora_id not in self._pinned)

    def acquire(self, lora_id: str, timeout: float | None = None) -> Lease:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            self._uses.record(lora_id)
            slot = self._slot_of.get(lora_id)
            if slot is not None:
                self.stats.hits += 1
                metrics.ADAPTER_HITS.inc()
                return self._lease_when_ready(slot, deadline)
            self.stats.misses += 1
            metrics.ADAPTER_MISSES.inc()
        weights = self._weights(lora_id, deadline)
        with self._lock:
            slot = self._slot_of.get(lora_id)
            if slot is not None:  # another thread placed it meanwhile
                return self._lease_when_ready(slot, deadline)
            slot = self._claim_slot(lora_id, weights, deadline)
        try:
            self._engine.write_slot(slot, weights)
        except BaseException as exc:
            with self._lock:
                self._slots[slot].error = exc
                self._forget_slot(slot)
            raise
        with self._lock:
            self._slots[slot].ready = True
            self._lock.notify_all()
        return Lease(lora_id, slot, weights.content_hash)

    def release(self, lease: Lease) -> None:
        with self._lock:
            state = self._slots[lease.slot]
            state.leases -= 1
            self._lru.move_to_end(lease.slot)
            self._lock.notify_all()

    def _lease_when_ready(self, slot: int, deadline: float | None) -> Lease:
        state = self._slots[slot]
        state.leases += 1
        while not state.ready:
            if state.error is not None:
                raise state.error
            if not self._wait(deadline):
                state.leases -= 1
                raise TimeoutError("adapter slot did not become ready in time")
        self._lru.move_to_end(slot)
        assert state.lora_id is not None
        return Lease(state.lora_id, slot, state.content_hash)

    def _claim_slot(self, lora_id: str, weights: AdapterWeights, deadline: float | None) -> int:
        while True:
            free = [
                slot
                for slot in self._lru
                if self._slots[slot].leases == 0 and self._slots[slot].lora_id not in self._pinned
            ]
            slot = self._uses.least_used(free, self._held_by)
            if slot is not None:
                if self._slots[slot].lora_id is not None:
                    self.stats.evictions += 1
                    metrics.ADAPTER_EVICTIONS.inc()
                self._forget_slot(slot)
                self._slots[slot] = _Slot(lora_id, weights.content_hash, leases=1)
                self._slot_of[lora_id] = slot
                self._lru.move_to_end(slot)
                return slot
            if not self._wait(deadline):
                raise TimeoutError("no adapter slot became free in time")

    def _held_by(self, slot: int) -> str | None:
        """The adapter a slot serves; None (reused first) when empty or dropped."""
        lora_id = self._slots[slot].lora_id
        return lora_id if lora_id is not None and self._slot_of.get(lora_id) == slot else None

    def _forget_slot(self, slot: int) -> None:
        old = self._slots[slot].lora_id
        if old is not None and self._slot_of.get(old) == slot:
            del self._slot_of[old]
        self._slots[slot] = _Slot()
        self._lru.move_to_end(slot, last=False)  # an empty slot is the first to reuse
        self._lock.notify_all()

    def _wait(self, deadline: float | None) -> bool:
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            return False
        self._lock.wait(remaining)
        return True

    def _weights(self, lora_id: str, deadline: float | None) -> AdapterWeights:
        """From the CPU tier, or loaded from disk exactly once however many threads ask."""
        with self._lock:
            if (cached := self._cpu.get(lora_id)) is not None:
                self._cpu.move_to_end(lora_id)
                return cached
            future = self._loading.get(lora_id)
            owner = future is None
            if future is None:
                future = self._loading[lora_id] = Future()
        if not owner:
            return future.result(
                None if deadline is None else max(0.0, deadline - time.monotonic())
            )
        try:
            weights = self._load(lora_id)
        except BaseException as exc:
            future.set_exception(exc)
            raise
        finally:
            with self._lock:
                self._loading.pop(lora_id, None)
        future.set_result(weights)
        return weights

    def _load(self, lora_id: str) -> AdapterWeights:
        started = time.perf_counter()
        files = read_files(lora_id, self._fetch(lora_id), self._rules)
        refusal = (lora_id, files.content_hash)
        self._refusals.check(refusal)
        try:
            weights = build_adapter(lora_id, files, self._engine.base_model_info(), self._rules)
        except AdapterInvalid as exc:
            self._refusals.add(refusal, exc)
            raise
        if self._pin_memory:
            weights = pin(weights)
        with self._lock:
            self._cpu[lora_id] = weights
            while len(self._cpu) > self._cpu_capacity:
                self._cpu.popitem(last=False)
            self.stats.loads += 1
            metrics.ADAPTER_LOAD.observe(time.perf_counter() - started)
        if self._on_load is not None:
            self._on_load(lora_id)
        return weights


def pin(weights: AdapterWeights) -> AdapterWeights:
    """Page-locked copies, so slot writes to a GPU are asynchronous DMA."""
    from worker.engine.lora import LoraModuleWeights

    modules = {
        name: LoraModuleWeights(a=w.a.pin_memory(), b=w.b.pin_memory())
        for name, w in weights.modules.items()
    }
    return AdapterWeights(weights.lora_id, weights.content_hash, modules)
