"""How long one forward of the bge-m3-shaped encoder takes on an H200: the simulated engine's clock.

Shape and numbers: XLM-R large (24 layers, hidden 1024, 16 heads, FFN 4096; the bge-m3
architecture), bf16, as measured on one H200 in `../shared/anchors/` (README there).

Model: ``seconds(batch) = FIXED_S + per_token x padded_tokens``, with padded tokens = rows x the
longest row (the batcher's own measure, and how the anchors padded their batches).

- ``per_token`` is calibrated so that the anchors' 256 x 128-token batch takes what it took:
  43.28 ms for the base model (5,914 items/s), 52.45 ms with the gathered-bmm LoRA over 8
  adapters (4,881 items/s; the GPU engine's `bmm` backend runs any mix of adapters in one
  batch). A batch with at least one adapter row costs the LoRA rate.
- ``FIXED_S`` (launches, the first layer's reads; what a 1-row batch still costs) is not measured
  directly by any anchor. It comes from `gpu_padding_anchor_h200.json`: its three schedules of
  the same 1,024 sequences (lengths from `random.seed(0)`, so reproducible here) differ in batch
  count, padded tokens and sum of rows x length^2 (attention), and the three timings determine
  ``n x fixed + c x tokens + a x rows.len^2`` exactly: fixed = 3.3 ms (`fit_padding_anchor`).
  The same fit predicts the 256 x 128 batch within 12 %, so the decomposition is plausible, not
  exact.

Not modelled: attention's growth with length (every text in the bench is ~128 tokens, where the
anchors were taken); adapter uploads (the engine copies them on their own CUDA stream); the
engine's host work (packing, pooling, the copy back), which the stand-in replaces by handing out
a ready float32 matrix. The stand-in sleeps for the modelled time, so the GIL is free meanwhile,
as it is while a real engine waits on CUDA.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: bge-m3's dense vector width.
BGE_M3_DIMS = 1024

#: gpu_lora_baseline_h200.json: one batch of B x T tokens.
ANCHOR_ROWS, ANCHOR_TOKENS = 256, 128
ANCHOR_BASE_S = 43.28e-3  # "base"
ANCHOR_LORA_S = 52.45e-3  # "gathered_bmm_8_adapters"

#: gpu_padding_anchor_h200.json: seconds for the same 1,024 sequences in three schedules.
PADDING_ANCHOR_S = {"arrival_bs64": 0.856, "sorted_bs64": 0.473, "sorted_budget_32k": 0.481}

#: Fixed cost of one forward, from `fit_padding_anchor()` (rounded; see the module docstring).
FIXED_S = 3.3e-3


@dataclass(frozen=True)
class H200Timing:
    fixed_s: float = FIXED_S
    base_s: float = ANCHOR_BASE_S  # one anchor batch (ANCHOR_ROWS x ANCHOR_TOKENS), base model
    lora_s: float = ANCHOR_LORA_S  # the same batch with adapters

    def per_token_s(self, lora: bool) -> float:
        return ((self.lora_s if lora else self.base_s) - self.fixed_s) / (
            ANCHOR_ROWS * ANCHOR_TOKENS
        )

    def batch_seconds(self, lengths: Sequence[int], lora: bool) -> float:
        """One forward over rows of these token counts, padded to the longest."""
        if not lengths:
            return 0.0
        return self.fixed_s + self.per_token_s(lora) * len(lengths) * max(lengths)

    def describe(self) -> dict[str, float]:
        return {
            "fixed_ms": round(self.fixed_s * 1e3, 3),
            "base_us_per_padded_token": round(self.per_token_s(False) * 1e6, 4),
            "lora_us_per_padded_token": round(self.per_token_s(True) * 1e6, 4),
        }

    def items_per_s(self, rows: int, tokens: int, lora: bool) -> float:
        """Throughput with every batch `rows` rows of `tokens` tokens."""
        return rows / self.batch_seconds([tokens] * rows, lora)


def _padding_anchor_batches() -> dict[str, list[list[int]]]:
    """The anchor script's three schedules (`gpu_padding_anchor.py`), as lists of lengths."""
    rng = random.Random(0)
    lengths = [rng.randint(8, 512) for _ in range(1024)]
    ordered = sorted(lengths)

    def fixed(seq: list[int], size: int) -> list[list[int]]:
        return [seq[i : i + size] for i in range(0, len(seq), size)]

    budget: list[list[int]] = [[]]
    for n in ordered:
        if budget[-1] and (len(budget[-1]) + 1) * max(*budget[-1], n) > 32768:
            budget.append([])
        budget[-1].append(n)
    return {
        "arrival_bs64": fixed(lengths, 64),
        "sorted_bs64": fixed(ordered, 64),
        "sorted_budget_32k": budget,
    }


def fit_padding_anchor() -> tuple[float, float, float]:
    """(fixed s per forward, s per padded token, s per row x length^2) solving the padding
    anchor's three timings exactly."""
    schedules = _padding_anchor_batches()
    matrix = [
        [
            len(batches),
            sum(len(b) * max(b) for b in batches),
            sum(len(b) * max(b) ** 2 for b in batches),
        ]
        for batches in schedules.values()
    ]
    seconds = [PADDING_ANCHOR_S[name] for name in schedules]
    fixed, per_token, per_square = np.linalg.solve(np.array(matrix, float), np.array(seconds))
    return float(fixed), float(per_token), float(per_square)
