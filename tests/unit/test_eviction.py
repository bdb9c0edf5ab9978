"""Slot eviction by recent use counts (worker/eviction.py)."""

from __future__ import annotations

import pytest

from worker.eviction import UseCounts

pytestmark = pytest.mark.unit


def least_used(uses: UseCounts, warm: list[str | None]) -> str | None:
    return uses.least_used(warm, lambda lora_id: lora_id)


def test_the_least_used_goes_first_and_the_least_recent_among_equals() -> None:
    uses = UseCounts(halflife=100)
    for lora_id in ("a", "a", "a", "b", "c", "c"):
        uses.record(lora_id)
    assert least_used(uses, ["a", "b", "c"]) == "b"
    assert least_used(uses, ["a", "c"]) == "c"
    uses.record("b")  # b and c: 2 uses each; the order given (least recent first) decides
    assert least_used(uses, ["c", "b", "a"]) == "c"
    assert least_used(uses, ["b", "c", "a"]) == "b"


def test_an_empty_slot_comes_before_any_adapter() -> None:
    uses = UseCounts(halflife=100)
    uses.record("a")
    assert least_used(uses, ["never-used", None, "a"]) is None
    assert uses.count("never-used") == 0 > uses.count(None)
    assert uses.least_used([], str) is None


def test_counts_halve_so_old_popularity_fades_and_unused_ids_are_dropped() -> None:
    uses = UseCounts(halflife=10)
    for _ in range(8):
        uses.record("old")
    uses.record("once")
    assert (uses.count("old"), uses.count("once"), len(uses)) == (8, 1, 2)
    uses.record("new")  # the 10th use: every count halves, ones drop to zero and out
    assert (uses.count("old"), uses.count("once"), uses.count("new"), len(uses)) == (4, 0, 0, 1)
    for _ in range(10):  # the workload moves on to "new"
        uses.record("new")
    assert uses.count("new") == 5 > uses.count("old") == 2
    assert least_used(uses, ["new", "old"]) == "old"


def test_memory_is_bounded_by_the_halflife() -> None:
    uses = UseCounts(halflife=50)
    for n in range(10_000):
        uses.record(f"id-{n}")
    assert len(uses) <= 50


def test_a_halflife_below_one_use_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1 use"):
        UseCounts(halflife=0)
