"""Packed (unpadded) batches: every real token once, rows back to back.

The linear layers, which hold most of an encoder's FLOPs, then run on exactly the real tokens of
a batch; only attention sees a padded view, built per batch from `pad_index`. Rows are ordered by
adapter slot so that each adapter's tokens form one contiguous segment (see `lora.py`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class PackedBatch:
    input_ids: torch.Tensor  # [N] token ids of all rows, concatenated
    position_ids: torch.Tensor  # [N]
    row_of_token: torch.Tensor  # [N] row index of each token
    pad_index: torch.Tensor  # [N] flat index of each token in a [rows, max_len] grid
    key_mask: torch.Tensor | None  # [rows, max_len] True at real tokens; None if no padding
    lengths: torch.Tensor  # [rows] float, for mean pooling
    row_starts: torch.Tensor  # [rows] index of each row's first token
    max_len: int

    @property
    def rows(self) -> int:
        return int(self.lengths.shape[0])

    @property
    def tokens(self) -> int:
        return int(self.input_ids.shape[0])


def pack(rows: list[list[int]], position_offset: int, device: torch.device) -> PackedBatch:
    """`position_offset` is where position ids start (RoBERTa/XLM-R: padding_idx + 1)."""
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    n = int(lengths.sum())
    max_len = int(lengths.max())
    starts = np.zeros(len(rows), dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    ids = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64, count=n)
    row_of = np.repeat(np.arange(len(rows)), lengths)
    offset_in_row = np.arange(n) - np.repeat(starts, lengths)
    key_mask = None
    if lengths.min() != max_len:
        mask = np.arange(max_len)[None, :] < lengths[:, None]
        key_mask = torch.from_numpy(mask).to(device, non_blocking=True)

    def put(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a).to(device, non_blocking=True)

    return PackedBatch(
        input_ids=put(ids),
        position_ids=put(offset_in_row + position_offset),
        row_of_token=put(row_of),
        pad_index=put(row_of * max_len + offset_in_row),
        key_mask=key_mask,
        lengths=put(lengths.astype(np.float32)),
        row_starts=put(starts),
        max_len=max_len,
    )
