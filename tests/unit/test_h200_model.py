"""The simulated H200's clock (`bench/h200_model.py`), which the control-plane benchmark's drain
sleeps by: it must reproduce the anchors it was derived from."""

from __future__ import annotations

import pytest

from bench.h200_model import (
    ANCHOR_BASE_S,
    ANCHOR_LORA_S,
    FIXED_S,
    H200Timing,
    fit_padding_anchor,
)

pytestmark = pytest.mark.unit


def test_the_anchor_batch_takes_what_it_took_on_the_h200() -> None:
    timing = H200Timing()
    assert timing.batch_seconds([128] * 256, lora=False) == pytest.approx(ANCHOR_BASE_S)
    assert timing.batch_seconds([128] * 256, lora=True) == pytest.approx(ANCHOR_LORA_S)
    assert timing.items_per_s(256, 128, lora=False) == pytest.approx(5914, rel=1e-3)


def test_fixed_cost_is_the_padding_anchors_fit() -> None:
    fixed, per_token, per_square = fit_padding_anchor()
    assert fixed == pytest.approx(FIXED_S, abs=0.05e-3)
    assert per_token > 0
    assert per_square > 0


def test_rows_are_padded_to_the_longest_and_each_forward_pays_the_fixed_cost() -> None:
    timing = H200Timing()
    assert timing.batch_seconds([100, 128], lora=True) == timing.batch_seconds([128, 128], True)
    assert timing.batch_seconds([1], lora=False) == pytest.approx(FIXED_S, rel=1e-3)
    assert timing.batch_seconds([], lora=False) == 0.0
    one_batch = timing.batch_seconds([128] * 32, lora=True)
    assert 2 * timing.batch_seconds([128] * 16, lora=True) == pytest.approx(one_batch + FIXED_S)


class _LateClock:
    """A clock whose every sleep overruns by `late` seconds, as on a loaded machine."""

    def __init__(self, late: float) -> None:
        self.now = 0.0
        self.late = late

    def perf_counter(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds + self.late


def test_the_simulated_engine_makes_up_for_late_wake_ups(monkeypatch: pytest.MonkeyPatch) -> None:
    """Otherwise a busy machine would show as an idle GPU (oversleeping stretches the drain)."""
    import bench.sim_worker as sim

    clock = _LateClock(late=0.004)
    monkeypatch.setattr(sim, "time", clock)
    engine = object.__new__(sim.SimulatedH200Engine)  # only the sleeping part, no model
    engine._late = 0.0
    for _ in range(100):
        engine._sleep(0.010)
    assert clock.now == pytest.approx(100 * 0.010 + clock.late)
