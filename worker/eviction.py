"""Which warm adapter gives up its slot: the least used of late, the least recent among equals.

Why not plain LRU: adapter popularity is skewed (a few adapters take most jobs, a long tail is
used now and then), and under LRU every tail adapter that comes by pushes a popular one out of
its slot, to be loaded again a moment later. Counting uses keeps the popular adapters warm and
makes a one-off adapter the next to go. Counts halve every `halflife` uses, so popularity that
moves on is forgotten, and adapters no longer used drop out (memory stays bounded).
`bench/routing_sim.py` drives this class in its workers; docs/benchmarks.md has the figures.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

T = TypeVar("T")


class UseCounts:
    def __init__(self, halflife: int) -> None:
        if halflife < 1:
            raise ValueError("halflife must be at least 1 use")
        self.halflife = halflife
        self._counts: dict[str, int] = {}
        self._since_halving = 0

    def record(self, lora_id: str) -> None:
        self._counts[lora_id] = self._counts.get(lora_id, 0) + 1
        self._since_halving += 1
        if self._since_halving >= self.halflife:
            self._since_halving = 0
            self._counts = {k: n // 2 for k, n in self._counts.items() if n > 1}

    def count(self, lora_id: str | None) -> int:
        """Uses of late; an empty slot (None) counts below any adapter."""
        return -1 if lora_id is None else self._counts.get(lora_id, 0)

    def least_used(self, candidates: Iterable[T], lora_id: Callable[[T], str | None]) -> T | None:
        """The first candidate with the fewest uses: pass them least recently used first."""
        best: T | None = None
        best_count: int | None = None
        for candidate in candidates:
            count = self.count(lora_id(candidate))
            if best_count is None or count < best_count:
                best, best_count = candidate, count
        return best

    def __len__(self) -> int:
        return len(self._counts)
