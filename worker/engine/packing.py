"""Packed (unpadded) batches: every real token once, rows back to back.

The linear layers, which hold most of an encoder's FLOPs, run on exactly the real tokens of a
batch. Attention is the one place that needs rows side by side: where a varlen kernel exists it
runs on the packed rows directly; elsewhere rows are grouped into length buckets and each bucket
is padded only to its own longest row, so a batch mixing short and long texts does not pay the
longest row's quadratic attention cost for every row. Rows are ordered by adapter slot so that each
adapter's tokens form one contiguous segment (see `lora.py`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch

#: A bucket closes when padding would make its attention cost this much above its rows' own.
BUCKET_SLACK = 1.25
#: Buckets smaller than this are not worth another attention call.
MIN_BUCKET_ROWS = 8


@dataclass(frozen=True)
class AttentionBucket:
    """Rows attended together, padded to the longest of them."""

    tokens: torch.Tensor | None  # packed positions of its tokens, row by row; None: all, in order
    grid_index: torch.Tensor | None  # each of those tokens' slot in [rows, max_len]; None: no pad
    key_mask: torch.Tensor | None  # [rows, max_len] True at real tokens; None: no padding
    rows: int
    max_len: int


@dataclass(frozen=True)
class PackedBatch:
    input_ids: torch.Tensor  # [N] token ids of all rows, concatenated
    position_ids: torch.Tensor  # [N]
    row_of_token: torch.Tensor  # [N] row index of each token
    lengths: torch.Tensor  # [rows] float, for mean pooling
    row_starts: torch.Tensor  # [rows] index of each row's first token
    cu_seqlens: torch.Tensor  # [rows + 1] int32 row boundaries, for varlen attention kernels
    max_len: int
    buckets: list[AttentionBucket]

    @property
    def rows(self) -> int:
        return int(self.lengths.shape[0])

    @property
    def tokens(self) -> int:
        return int(self.input_ids.shape[0])


def length_buckets(lengths: np.ndarray) -> list[np.ndarray]:
    """Row indices grouped by similar length (attention cost grows with length squared)."""
    order = np.argsort(lengths, kind="stable")
    buckets: list[list[int]] = []
    current: list[int] = []
    real = 0
    for i in order.tolist():
        cost = int(lengths[i]) ** 2
        too_padded = (len(current) + 1) * cost > BUCKET_SLACK * (real + cost)
        if len(current) >= MIN_BUCKET_ROWS and too_padded:
            buckets.append(current)
            current, real = [], 0
        current.append(i)
        real += cost
    buckets.append(current)
    return [np.array(b, dtype=np.int64) for b in buckets]


def _bucket(
    rows: np.ndarray, lengths: np.ndarray, starts: np.ndarray, device: torch.device, whole: bool
) -> AttentionBucket:
    lens = lengths[rows]
    max_len = int(lens.max())
    n = int(lens.sum())
    offset_in_row = np.arange(n) - np.repeat(np.cumsum(lens) - lens, lens)
    tokens = None if whole else np.repeat(starts[rows], lens) + offset_in_row
    padded = bool(lens.min() != max_len)
    grid_index = np.repeat(np.arange(len(rows)) * max_len, lens) + offset_in_row
    mask = np.arange(max_len)[None, :] < lens[:, None]
    return AttentionBucket(
        tokens=None if tokens is None else _put(tokens, device),
        grid_index=_put(grid_index, device) if padded else None,
        key_mask=_put(mask, device) if padded else None,
        rows=len(rows),
        max_len=max_len,
    )


def _put(a: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(a).to(device, non_blocking=True)


def pack(
    rows: list[list[int]], position_offset: int, device: torch.device, bucketed: bool = True
) -> PackedBatch:
    """`position_offset` is where position ids start (RoBERTa/XLM-R: padding_idx + 1);
    `bucketed=False` when attention runs on the packed rows (varlen), so needs no buckets."""
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    n = int(lengths.sum())
    starts = np.zeros(len(rows), dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    ids = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64, count=n)
    row_of = np.repeat(np.arange(len(rows)), lengths)
    offset_in_row = np.arange(n) - np.repeat(starts, lengths)
    groups = length_buckets(lengths) if bucketed else []
    if len(groups) <= 1:
        buckets = [_bucket(np.arange(len(rows)), lengths, starts, device, whole=True)]
    else:
        buckets = [_bucket(g, lengths, starts, device, whole=False) for g in groups]
    return PackedBatch(
        input_ids=_put(ids, device),
        position_ids=_put(offset_in_row + position_offset, device),
        row_of_token=_put(row_of, device),
        lengths=_put(lengths.astype(np.float32), device),
        row_starts=_put(starts, device),
        cu_seqlens=_put(np.append(starts, n).astype(np.int32), device),
        max_len=int(lengths.max()),
        buckets=buckets,
    )
