"""Many LoRA adapters in one forward pass over a packed batch.

Every LoRA target linear computes `W x + B_i (A_i x)` for token rows whose sequence uses adapter
slot i (`B_i` arrives already multiplied by the adapter's scale). The batch's rows are ordered by
slot, so each slot's tokens are one contiguous segment and rows without an adapter are simply not
in any segment: a batch with no adapter runs no LoRA code at all.

Linears of one layer that read the same input form a group (query/key/value), and a group's
adapters are stored fused: per slot, `A` stacks the targeted modules' `A` rows, and `B` places each
module's `B` in its rows and output columns, so one shrink serves the whole group.

Two ways to run the segments, the same numbers either way:
- `segment`: one shrink and one expand per (segment, module), sliced to each adapter's real rank.
  No padding at all; the launch count grows with the adapters in a batch, which a CPU does not
  mind.
- `bmm`: segments are cut into chunks of `chunk` tokens, each chunk gathered into one batched GEMM
  with its slot's weights, padded to the largest rank in the batch. A fixed number of kernels per
  group whatever the adapter count, for GPUs, where launches are what costs.
What this module does NOT do: decide slots (the adapter cache does) or guard them; a slot written
while a batch that uses it runs gives that batch mixed weights, which the cache's pinning prevents.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class LoraModuleWeights:
    a: torch.Tensor  # [r, in]
    b: torch.Tensor  # [out, r], scale folded in


@dataclass(frozen=True)
class AdapterWeights:
    """A validated adapter, keyed by canonical module path
    (`encoder.layer.0.attention.self.query`)."""

    lora_id: str
    content_hash: str
    modules: dict[str, LoraModuleWeights]

    @property
    def rank(self) -> int:
        return max(w.a.shape[0] for w in self.modules.values())


@dataclass(frozen=True)
class LoraGroup:
    """Linears of one layer that read the same input; their outputs sit side by side in `y`."""

    modules: tuple[str, ...]
    in_features: int
    out_features: tuple[int, ...]

    @property
    def col_offsets(self) -> tuple[int, ...]:
        offsets, at = [], 0
        for out in self.out_features:
            offsets.append(at)
            at += out
        return tuple(offsets)


@dataclass(frozen=True)
class _Piece:
    """Where one module of one slot lives in its group's fused tensors."""

    row: int
    rank: int
    col: int
    out: int


@dataclass
class _SlotLayout:
    pieces: list[list[_Piece]] = field(default_factory=list)  # per group
    rows: list[int] = field(default_factory=list)  # fused A rows used, per group


class LoraPool:
    """Preallocated slots on the compute device; `write` copies one adapter into a slot."""

    def __init__(
        self,
        groups: list[LoraGroup],
        n_slots: int,
        max_rank: int,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        self.groups = groups
        self.n_slots = n_slots
        self.max_rank = max_rank
        self.device = device
        self._where = {
            name: (g, j) for g, group in enumerate(groups) for j, name in enumerate(group.modules)
        }
        self.dtype = dtype
        # A group's tensors are allocated when the first adapter targeting it arrives, so
        # modules no adapter touches (often the FFN) cost no memory and no time.
        self.a: list[torch.Tensor | None] = [None] * len(groups)
        self.b: list[torch.Tensor | None] = [None] * len(groups)
        self._alloc_lock = threading.Lock()
        self.layouts = [_SlotLayout() for _ in range(n_slots)]

    def _group_tensors(self, g: int) -> tuple[torch.Tensor, torch.Tensor]:
        with self._alloc_lock:
            a, b = self.a[g], self.b[g]
            if a is None or b is None:
                group, rows = self.groups[g], len(self.groups[g].modules) * self.max_rank
                dev, dt = self.device, self.dtype
                a = torch.zeros(self.n_slots, rows, group.in_features, device=dev, dtype=dt)
                b = torch.zeros(self.n_slots, rows, sum(group.out_features), device=dev, dtype=dt)
                self.a[g], self.b[g] = a, b
            return a, b

    def write(self, slot: int, weights: AdapterWeights) -> None:
        per_group: list[list[tuple[int, LoraModuleWeights]]] = [[] for _ in self.groups]
        for name, w in weights.modules.items():
            g, j = self._where[name]
            per_group[g].append((j, w))
        layout = _SlotLayout()
        for g, (group, items) in enumerate(zip(self.groups, per_group, strict=True)):
            pieces, row = [], 0
            if items or self.a[g] is not None:
                a, b = self._group_tensors(g)
                a[slot].zero_()
                b[slot].zero_()
                for j, w in sorted(items, key=lambda item: item[0]):
                    rank, col, out = w.a.shape[0], group.col_offsets[j], group.out_features[j]
                    a[slot, row : row + rank].copy_(w.a, non_blocking=True)
                    b[slot, row : row + rank, col : col + out].copy_(w.b.T, non_blocking=True)
                    pieces.append(_Piece(row=row, rank=rank, col=col, out=out))
                    row += rank
            layout.pieces.append(pieces)
            layout.rows.append(row)
        self.layouts[slot] = layout


@dataclass(frozen=True)
class Segment:
    slot: int
    start: int  # first token
    end: int  # one past the last token


class LoraBatch:
    """The adapter segments of one packed batch, and how to run them."""

    def __init__(
        self, pool: LoraPool, segments: list[Segment], backend: str = "segment", chunk: int = 128
    ) -> None:
        if backend not in ("segment", "bmm"):
            raise ValueError(f"unknown LoRA backend {backend!r}")
        self.pool = pool
        self.segments = segments
        self.backend = backend
        self._chunks = _Chunks(segments, chunk, pool.device) if backend == "bmm" else None

    def add(self, group: int, x: torch.Tensor, y: torch.Tensor) -> None:
        """y[tokens of slot i] += x[...] A_i^T B_i for every segment, in place."""
        if self._chunks is None:
            self._add_segments(group, x, y)
        else:
            self._add_bmm(group, x, y)

    def _add_segments(self, g: int, x: torch.Tensor, y: torch.Tensor) -> None:
        a, b = self.pool.a[g], self.pool.b[g]
        if a is None or b is None:
            return
        for seg in self.segments:
            layout = self.pool.layouts[seg.slot]
            rows = layout.rows[g]
            if rows == 0:
                continue
            h = x[seg.start : seg.end] @ a[seg.slot, :rows].T
            out = y[seg.start : seg.end]
            for p in layout.pieces[g]:
                out[:, p.col : p.col + p.out].addmm_(
                    h[:, p.row : p.row + p.rank],
                    b[seg.slot, p.row : p.row + p.rank, p.col : p.col + p.out],
                )

    def _add_bmm(self, g: int, x: torch.Tensor, y: torch.Tensor) -> None:
        chunks = self._chunks
        assert chunks is not None
        rows = max(self.pool.layouts[s.slot].rows[g] for s in self.segments)
        pool_a, pool_b = self.pool.a[g], self.pool.b[g]
        if rows == 0 or pool_a is None or pool_b is None:
            return
        a = pool_a.index_select(0, chunks.slots)[:, :rows]  # [n, R, in]
        b = pool_b.index_select(0, chunks.slots)[:, :rows]  # [n, R, out]
        xc = x.index_select(0, chunks.token_index.view(-1)).view(*chunks.token_index.shape, -1)
        delta = torch.bmm(torch.bmm(xc, a.transpose(1, 2)), b)  # [n, chunk, out]
        delta = delta.view(-1, delta.shape[-1]).index_select(0, chunks.valid)
        y.index_add_(0, chunks.valid_tokens, delta)


class _Chunks:
    """Segments cut into equal chunks: chunk k covers tokens `token_index[k]` with slot
    `slots[k]`; padding positions repeat a real token and are dropped again via `valid`."""

    def __init__(self, segments: list[Segment], chunk: int, device: torch.device) -> None:
        slots: list[int] = []
        index: list[list[int]] = []
        valid: list[int] = []
        valid_tokens: list[int] = []
        for seg in segments:
            for start in range(seg.start, seg.end, chunk):
                end = min(start + chunk, seg.end)
                k = len(slots)
                slots.append(seg.slot)
                tokens = list(range(start, end))
                index.append(tokens + [start] * (chunk - len(tokens)))
                valid.extend(range(k * chunk, k * chunk + len(tokens)))
                valid_tokens.extend(tokens)
        self.slots = torch.tensor(slots, dtype=torch.long, device=device)
        self.token_index = torch.tensor(index, dtype=torch.long, device=device)
        self.valid = torch.tensor(valid, dtype=torch.long, device=device)
        self.valid_tokens = torch.tensor(valid_tokens, dtype=torch.long, device=device)
