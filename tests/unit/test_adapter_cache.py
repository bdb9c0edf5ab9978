"""The warm-adapter cache (worker/adapter_cache.py): slots, leases, eviction, pins, shared loads.

Most tests replace `read_files` / `build_adapter` with a fake (controllable, countable) and the
engine with a recording `SlotWriter`; one test runs the real chain on PEFT-saved adapters and a
`LoraPool`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any

import pytest
import torch

import worker.adapter_cache as adapter_cache
from common.adapter_check import AdapterFiles, AdapterRules
from common.errors import AdapterNonFinite, AdapterNotFound, AdapterTensorsMismatch
from common.settings import AdapterSettings, BaseMismatchPolicy
from loraq.stack import wait_until
from tests.unit.support import PEFT_WARNINGS, base_info_for, blocked_in
from worker.adapter_cache import AdapterCache, Lease, Refusals
from worker.engine.lora import AdapterWeights, LoraModuleWeights, LoraPool
from worker.engine.types import BaseModelInfo, ModuleShape

pytestmark = [
    pytest.mark.unit,
    pytest.mark.timeout(60),
    pytest.mark.usefixtures("single_torch_thread"),
]

RULES = AdapterRules(max_rank=8, max_file_bytes=10**8, base_mismatch=BaseMismatchPolicy.REFUSE)
HALFLIFE = AdapterSettings().use_halflife
BASE = BaseModelInfo("fake/base", frozenset({"fake/base"}), {"m": ModuleShape(2, 2)})
WAIT = 5.0


def _weights(lora_id: str) -> AdapterWeights:
    w = LoraModuleWeights(a=torch.ones(1, 2), b=torch.ones(2, 1))
    return AdapterWeights(lora_id, "hash-" + lora_id, {"m": w})


class FakeEngine:
    """Records slot writes; `fail` names adapters whose write raises; `gates` block writes."""

    def __init__(self) -> None:
        self.base = BASE
        self.writes: list[tuple[int, str]] = []
        self.fail: set[str] = set()
        self.gates: dict[str, threading.Event] = {}

    def write_slot(self, slot: int, weights: AdapterWeights) -> None:
        if (gate := self.gates.get(weights.lora_id)) is not None:
            assert gate.wait(WAIT)
        if weights.lora_id in self.fail:
            raise RuntimeError(f"device write failed for {weights.lora_id}")
        self.writes.append((slot, weights.lora_id))

    def base_model_info(self) -> BaseModelInfo:
        return self.base


class FakeReader:
    """Stands in for `read_files` + `build_adapter`: counts validations (`calls`);
    `errors`, `gates` and the files' content hash (`contents`) per adapter id."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.errors: dict[str, Exception] = {}
        self.gates: dict[str, threading.Event] = {}
        self.contents: dict[str, str] = {}
        self.lock = threading.Lock()

    def read_files(self, lora_id: str, path: Path, rules: AdapterRules) -> AdapterFiles:
        assert path == Path("/adapters") / lora_id
        assert rules is RULES
        return AdapterFiles(b"", b"", self.contents.get(lora_id, "v1"))

    def __call__(
        self, lora_id: str, files: AdapterFiles, base: BaseModelInfo, rules: AdapterRules
    ) -> AdapterWeights:
        assert base is BASE and rules is RULES
        with self.lock:
            self.calls.append(lora_id)
        if (gate := self.gates.get(lora_id)) is not None:
            assert gate.wait(WAIT)
        if (error := self.errors.get(lora_id)) is not None:
            raise error
        return _weights(lora_id)


@pytest.fixture
def reader(monkeypatch: pytest.MonkeyPatch) -> FakeReader:
    fake = FakeReader()
    monkeypatch.setattr(adapter_cache, "read_files", fake.read_files)
    monkeypatch.setattr(adapter_cache, "build_adapter", fake)
    return fake


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def make_cache(reader: FakeReader, engine: FakeEngine) -> Callable[..., AdapterCache]:
    def make(
        n_slots: int = 2, cpu_capacity: int = 16, refusals: Refusals | None = None
    ) -> AdapterCache:
        return AdapterCache(
            lambda i: Path("/adapters") / i,
            engine,
            RULES,
            n_slots,
            cpu_capacity,
            use_halflife=HALFLIFE,
            refusals=refusals,
        )

    return make


def use(cache: AdapterCache, lora_id: str) -> Lease:
    lease = cache.acquire(lora_id, timeout=WAIT)
    cache.release(lease)
    return lease


class Runner:
    """Threads calling a function, with their outcomes as futures."""

    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []

    def start(self, fn: Callable[[], Any]) -> tuple[threading.Thread, Future[Any]]:
        fut: Future[Any] = Future()

        def body() -> None:
            try:
                fut.set_result(fn())
            except BaseException as exc:
                fut.set_exception(exc)

        thread = threading.Thread(target=body, daemon=True)
        thread.start()
        self.threads.append(thread)
        return thread, fut

    def join(self) -> None:
        for t in self.threads:
            t.join(WAIT)


@pytest.fixture
def runner() -> Iterator[Runner]:
    r = Runner()
    yield r
    r.join()


def test_miss_then_hit(make_cache, reader: FakeReader, engine: FakeEngine) -> None:
    cache = make_cache()
    first = cache.acquire("org/a")
    assert first == Lease("org/a", first.slot, "hash-org/a")
    cache.release(first)
    second = cache.acquire("org/a")
    cache.release(second)
    assert second == first
    assert (cache.stats.misses, cache.stats.hits, cache.stats.loads) == (1, 1, 1)
    assert cache.stats.evictions == 0
    assert reader.calls == ["org/a"]
    assert engine.writes == [(first.slot, "org/a")]
    assert cache.warm() == ["org/a"]


def test_eviction_takes_the_least_used_then_least_recent(make_cache, engine: FakeEngine) -> None:
    cache = make_cache(n_slots=2)
    a, b = use(cache, "a"), use(cache, "b")
    assert a.slot != b.slot
    use(cache, "a")  # a: 2 uses, b: 1
    c = use(cache, "c")
    assert c.slot == b.slot  # b, the less used, made room
    assert sorted(cache.warm()) == ["a", "c"]
    use(cache, "c")  # a and c: 2 uses each; a is the less recent
    d = use(cache, "d")
    assert d.slot == a.slot
    assert sorted(cache.warm()) == ["c", "d"]
    assert (cache.stats.hits, cache.stats.misses, cache.stats.evictions) == (2, 4, 2)


def test_a_popular_adapter_outlives_a_stream_of_one_offs(make_cache, engine: FakeEngine) -> None:
    """What LRU gets wrong: with 2 slots, each one-off would push the popular adapter out."""
    cache = make_cache(n_slots=2)
    for n in range(20):
        use(cache, "popular")
        use(cache, f"once-{n}")
    writes = [lora for _, lora in engine.writes]
    assert writes.count("popular") == 1
    assert cache.stats.hits == 19
    assert "popular" in cache.warm()


def test_cpu_tier_saves_reload(make_cache, reader: FakeReader, engine: FakeEngine) -> None:
    cache = make_cache(n_slots=1, cpu_capacity=2)
    use(cache, "a")
    use(cache, "b")  # evicts a from the slot; a stays in the CPU tier
    use(cache, "a")  # back into a slot without reading the disk
    assert reader.calls == ["a", "b"]
    assert cache.stats.loads == 2
    assert [lora for _, lora in engine.writes] == ["a", "b", "a"]
    use(cache, "c")  # CPU tier (capacity 2, LRU): drops b, the least recently used
    use(cache, "b")
    assert reader.calls == ["a", "b", "c", "b"]
    use(cache, "c")
    assert reader.calls == ["a", "b", "c", "b"]


def test_prefetch_loads_into_the_cpu_tier_and_evicts_nothing(
    make_cache, reader: FakeReader, engine: FakeEngine
) -> None:
    cache = make_cache(n_slots=1)
    use(cache, "warm")
    cache.prefetch("next")
    cache.prefetch("next")  # already in the CPU tier: not read again
    cache.prefetch("warm")  # already in a slot: nothing to do
    assert reader.calls == ["warm", "next"]
    assert cache.warm() == ["warm"], "a prefetch takes no slot"
    use(cache, "next")  # its first job pays a slot write only
    assert reader.calls == ["warm", "next"]
    assert [lora for _, lora in engine.writes] == ["warm", "next"]


def test_leased_slot_is_never_evicted(make_cache, engine: FakeEngine, runner: Runner) -> None:
    cache = make_cache(n_slots=1)
    held = cache.acquire("a")
    with pytest.raises(TimeoutError):
        cache.acquire("b", timeout=0.05)
    assert cache.warm() == ["a"]
    assert cache.stats.evictions == 0
    assert engine.writes == [(0, "a")]
    assert cache.free_slots() == 0

    _, waiting = runner.start(lambda: cache.acquire("b"))  # no timeout: blocks
    with pytest.raises(FutureTimeout):
        waiting.result(timeout=0.05)
    assert cache.warm() == ["a"]
    cache.release(held)
    lease = waiting.result(timeout=WAIT)
    assert lease.lora_id == "b" and lease.slot == 0
    assert cache.warm() == ["b"]
    assert cache.stats.evictions == 1
    cache.release(lease)
    assert cache.free_slots() == 1


def test_lease_survives_pressure_from_many_adapters(make_cache, engine: FakeEngine) -> None:
    cache = make_cache(n_slots=2)
    held = cache.acquire("keep")
    for name in ("x", "y", "z", "w"):
        lease = use(cache, name)
        assert lease.slot != held.slot
    assert "keep" in cache.warm()
    assert all(slot == held.slot for slot, lora in engine.writes if lora == "keep")
    cache.release(held)


def test_pinned_adapter_never_evicted(make_cache, engine: FakeEngine) -> None:
    cache = make_cache(n_slots=2)
    cache.pin("p")
    assert cache.free_slots() == 1
    for name in ("a", "b", "c", "d"):
        use(cache, name)
        assert "p" in cache.warm()
    assert [lora for _, lora in engine.writes].count("p") == 1
    assert cache.stats.evictions == 3
    held = cache.acquire("d")
    with pytest.raises(TimeoutError):
        cache.acquire("e", timeout=0.05)  # the only other slot is pinned
    cache.release(held)
    assert use(cache, "p").slot == engine.writes[0][0]


def test_concurrent_first_use_loads_once(
    make_cache, reader: FakeReader, engine: FakeEngine, runner: Runner
) -> None:
    cache = make_cache(n_slots=2)
    gate = reader.gates["org/new"] = threading.Event()
    started = [runner.start(lambda: cache.acquire("org/new", timeout=WAIT)) for _ in range(10)]
    wait_until(lambda: cache.stats.misses == 10 and len(reader.calls) == 1, 30, "one read")
    owner = [t for t, _ in started if blocked_in(t, "_load", "__call__")]
    assert len(owner) == 1
    # Every other thread waits on the owner's load rather than reading the files itself.
    wait_until(
        lambda: all(blocked_in(t, "_weights", "result") for t, _ in started if t is not owner[0]),
        30,
        "the others to wait on the owner's load",
    )
    gate.set()
    leases = [fut.result(timeout=WAIT) for _, fut in started]
    assert reader.calls == ["org/new"]
    assert cache.stats.loads == 1
    assert len({lease.slot for lease in leases}) == 1
    assert {lease.content_hash for lease in leases} == {"hash-org/new"}
    assert engine.writes == [(leases[0].slot, "org/new")]
    for lease in leases:
        cache.release(lease)
    assert cache.free_slots() == 2


def test_failed_load_reaches_every_waiter_and_refusal_is_remembered(
    make_cache, reader: FakeReader, engine: FakeEngine, runner: Runner
) -> None:
    cache = make_cache(n_slots=2)
    gate = reader.gates["org/bad"] = threading.Event()
    reader.errors["org/bad"] = AdapterTensorsMismatch("broken tensors")
    started = [runner.start(lambda: cache.acquire("org/bad", timeout=WAIT)) for _ in range(5)]
    wait_until(lambda: cache.stats.misses == 5 and len(reader.calls) == 1, 30, "one read")
    owner = next(t for t, _ in started if blocked_in(t, "_load", "__call__"))
    wait_until(
        lambda: all(blocked_in(t, "_weights", "result") for t, _ in started if t is not owner),
        30,
        "the others to wait on the owner's load",
    )
    gate.set()
    for _, fut in started:
        with pytest.raises(AdapterTensorsMismatch, match="broken tensors"):
            fut.result(timeout=WAIT)
    assert reader.calls == ["org/bad"]
    assert cache.stats.loads == 0
    assert engine.writes == []
    assert cache.warm() == []
    assert cache.free_slots() == 2

    # The same files are not validated again: the refusal is remembered by their content hash.
    for _ in range(3):
        with pytest.raises(AdapterTensorsMismatch, match="broken tensors"):
            cache.acquire("org/bad", timeout=WAIT)
    assert reader.calls == ["org/bad"]
    # Fixed files (another content hash) are validated at once, and served.
    del reader.errors["org/bad"]
    reader.contents["org/bad"] = "v2"
    lease = cache.acquire("org/bad", timeout=WAIT)
    assert reader.calls == ["org/bad", "org/bad"]
    assert lease.lora_id == "org/bad"
    cache.release(lease)


def test_failure_that_is_no_refusal_is_not_remembered(make_cache, reader: FakeReader) -> None:
    cache = make_cache()
    reader.errors["org/flaky"] = OSError("disk hiccup")
    with pytest.raises(OSError, match="disk hiccup"):
        cache.acquire("org/flaky", timeout=WAIT)
    del reader.errors["org/flaky"]
    cache.release(cache.acquire("org/flaky", timeout=WAIT))
    assert reader.calls == ["org/flaky", "org/flaky"]


def test_refusals_expire_and_are_bounded(make_cache, reader: FakeReader) -> None:
    now = [0.0]
    refusals = Refusals(capacity=2, ttl_s=60.0, clock=lambda: now[0])
    cache = make_cache(refusals=refusals)
    for name in ("a", "b", "c"):
        reader.errors[name] = AdapterNonFinite(f"{name} is NaN")
        with pytest.raises(AdapterNonFinite):
            cache.acquire(name, timeout=WAIT)
    assert len(refusals) == 2  # "a", the oldest, made room
    with pytest.raises(AdapterNonFinite, match="a is NaN"):
        cache.acquire("a", timeout=WAIT)
    with pytest.raises(AdapterNonFinite, match="c is NaN"):
        cache.acquire("c", timeout=WAIT)
    assert reader.calls == ["a", "b", "c", "a"]  # "c" came from memory
    now[0] = 61.0
    with pytest.raises(AdapterNonFinite, match="c is NaN"):
        cache.acquire("c", timeout=WAIT)
    assert reader.calls == ["a", "b", "c", "a", "c"]  # expired: validated again


def test_fetch_failure_propagates(reader: FakeReader, engine: FakeEngine) -> None:
    def fetch(lora_id: str) -> Path:
        if lora_id == "org/missing":
            raise AdapterNotFound(f"adapter {lora_id!r} not found")
        return Path("/adapters") / lora_id

    cache = AdapterCache(fetch, engine, RULES, n_slots=1, cpu_capacity=1, use_halflife=HALFLIFE)
    for _ in range(2):
        with pytest.raises(AdapterNotFound):
            cache.acquire("org/missing", timeout=WAIT)
    assert cache.stats.misses == 2 and cache.stats.loads == 0
    assert use(cache, "org/ok").lora_id == "org/ok"  # the cache still works


def test_failed_slot_write_reaches_waiter_and_frees_slot(
    make_cache, engine: FakeEngine, runner: Runner
) -> None:
    cache = make_cache(n_slots=1)
    gate = engine.gates["w"] = threading.Event()
    engine.fail.add("w")
    writer, first = runner.start(lambda: cache.acquire("w", timeout=WAIT))
    wait_until(lambda: blocked_in(writer, "acquire", "write_slot"), 30, "the write")
    waiter, second = runner.start(lambda: cache.acquire("w", timeout=WAIT))
    wait_until(lambda: blocked_in(waiter, "_lease_when_ready", "_wait"), 30, "the waiter")
    assert cache.stats.hits == 1  # the second caller found the slot being written
    gate.set()
    for fut in (first, second):
        with pytest.raises(RuntimeError, match="device write failed"):
            fut.result(timeout=WAIT)
    assert cache.warm() == []
    assert cache.free_slots() == 1
    engine.fail.clear()
    lease = cache.acquire("w", timeout=WAIT)  # retried, from the CPU tier
    assert engine.writes == [(0, "w")]
    cache.release(lease)


def test_hit_waits_for_slot_being_written(make_cache, engine: FakeEngine, runner: Runner) -> None:
    cache = make_cache(n_slots=1)
    gate = engine.gates["slow"] = threading.Event()
    writer, first = runner.start(lambda: cache.acquire("slow", timeout=WAIT))
    wait_until(lambda: blocked_in(writer, "acquire", "write_slot"), 30, "the write")
    with pytest.raises(TimeoutError):
        cache.acquire("slow", timeout=0.05)  # the slot is not ready yet
    waiter, second = runner.start(lambda: cache.acquire("slow", timeout=WAIT))
    wait_until(lambda: blocked_in(waiter, "_lease_when_ready", "_wait"), 30, "the waiter")
    assert not second.done()
    gate.set()
    a, b = first.result(timeout=WAIT), second.result(timeout=WAIT)
    assert a == b
    assert engine.writes == [(0, "slow")]
    cache.release(a)
    cache.release(b)
    assert cache.free_slots() == 1


def test_empty_slot_preferred_over_eviction(make_cache, engine: FakeEngine) -> None:
    cache = make_cache(n_slots=2)
    use(cache, "a")
    engine.fail.add("x")
    with pytest.raises(RuntimeError):
        cache.acquire("x", timeout=WAIT)  # claims the free slot, then frees it again
    use(cache, "b")
    assert sorted(cache.warm()) == ["a", "b"]
    assert cache.stats.evictions == 0


@PEFT_WARNINGS
def test_real_adapters_into_a_lora_pool(make_adapter, make_base) -> None:
    """The real read_adapter on PEFT files, written into a real LoraPool."""
    from worker.engine.encoder import PackedEncoder

    paths = {
        "org/q": make_adapter("q", r=2, target_modules=["query"]),
        "org/v": make_adapter("v", r=4, target_modules=["value", "intermediate.dense"]),
    }
    base = make_base()

    class PoolWriter:
        def __init__(self) -> None:
            self.base = base_info_for(base)
            self.pool = LoraPool(
                PackedEncoder(base).lora_groups(), 1, 4, torch.device("cpu"), torch.float32
            )

        def base_model_info(self) -> BaseModelInfo:
            return self.base

        def write_slot(self, slot: int, weights: AdapterWeights) -> None:
            self.pool.write(slot, weights)

    writer = PoolWriter()
    cache = AdapterCache(
        paths.__getitem__, writer, RULES, n_slots=1, cpu_capacity=4, use_halflife=HALFLIFE
    )
    q = use(cache, "org/q")
    assert len(q.content_hash) == 16
    assert writer.pool.layouts[0].rows == [2, 0, 0, 0] * 2  # the query rows of each layer
    v = use(cache, "org/v")
    assert v.slot == q.slot == 0
    # Now the other adapter: per layer, value rows (q/k/v group) and intermediate.dense rows.
    assert writer.pool.layouts[0].rows == [4, 0, 4, 0] * 2
    assert cache.stats.evictions == 1
    assert use(cache, "org/q").content_hash == q.content_hash
    assert cache.stats.loads == 2


@PEFT_WARNINGS
def test_real_refusal_remembered_until_the_files_change(
    make_adapter, make_base, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.unit.support import edit_config

    path = make_adapter("nan", r=2, lora_alpha=4, target_modules=["query"])
    edit_config(path, lora_alpha=float("nan"))
    validated: list[str] = []

    def counting_build(lora_id: str, *args: Any) -> AdapterWeights:
        validated.append(lora_id)
        return real_build(lora_id, *args)

    real_build = adapter_cache.build_adapter
    monkeypatch.setattr(adapter_cache, "build_adapter", counting_build)
    engine = FakeEngine()
    engine.base = base_info_for(make_base())
    cache = AdapterCache({"org/nan": path}.__getitem__, engine, RULES, 1, 1, use_halflife=HALFLIFE)
    for _ in range(3):
        with pytest.raises(AdapterNonFinite):
            cache.acquire("org/nan", timeout=WAIT)
    assert validated == ["org/nan"]
    edit_config(path, lora_alpha=4)
    assert use(cache, "org/nan").lora_id == "org/nan"
    assert validated == ["org/nan", "org/nan"]


def test_unpinned_adapter_is_evicted_like_any_other(make_cache, engine: FakeEngine) -> None:
    cache = make_cache(n_slots=1)
    cache.pin("p")
    with pytest.raises(TimeoutError):
        cache.acquire("a", timeout=0.05)
    cache.unpin("p")
    use(cache, "a")
    assert cache.warm() == ["a"]


def test_dropped_adapter_leaves_at_once_or_after_its_last_lease(
    make_cache, reader: FakeReader, engine: FakeEngine
) -> None:
    cache = make_cache(n_slots=2)
    use(cache, "gone")
    use(cache, "kept")
    for _ in range(5):
        use(cache, "gone")  # the more used: plain eviction would keep it
    cache.drop("gone")
    assert cache.warm() == ["kept"]
    use(cache, "new")  # takes the dropped slot, not the least used live one
    assert sorted(cache.warm()) == ["kept", "new"]

    held = cache.acquire("leased", timeout=WAIT)  # evicts "kept" or "new"
    cache.drop("leased")
    assert "leased" not in cache.warm()
    cache.release(held)
    use(cache, "after")  # the dropped slot, once free, is the first reused
    assert len(cache.warm()) == 2 and "after" in cache.warm()
    reader.calls.clear()
    use(cache, "leased")  # a dropped adapter asked for again is loaded again
    assert reader.calls == ["leased"]
