"""Sentence embedding from token states, as the model's sentence-transformers config says.

The pooling mode and whether the model normalizes come from `modules.json` and the pooling
module's `config.json`, so a model dir behaves here as it does in sentence-transformers. A plain
HF dir without them gets mean pooling, unnormalized.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import torch
import torch.nn.functional as F

from worker.engine.packing import PackedBatch


class PoolingMode(StrEnum):
    MEAN = "mean"
    CLS = "cls"
    MAX = "max"


@dataclass(frozen=True)
class SentenceConfig:
    pooling: PoolingMode
    normalize: bool


_MODE_KEYS = {
    "pooling_mode_mean_tokens": PoolingMode.MEAN,
    "pooling_mode_cls_token": PoolingMode.CLS,
    "pooling_mode_max_tokens": PoolingMode.MAX,
}


def read_sentence_config(model_dir: Path) -> SentenceConfig:
    modules_file = model_dir / "modules.json"
    modules = json.loads(modules_file.read_text()) if modules_file.exists() else []
    pooling, normalize = PoolingMode.MEAN, False
    for module in modules:
        kind = module.get("type", "")
        if kind.endswith("Pooling"):
            pooling = _read_pooling(model_dir / module.get("path", ""))
        elif kind.endswith("Normalize"):
            normalize = True
    return SentenceConfig(pooling=pooling, normalize=normalize)


def _read_pooling(path: Path) -> PoolingMode:
    cfg = json.loads((path / "config.json").read_text())
    if mode := cfg.get("pooling_mode"):
        return PoolingMode(mode)
    chosen = [m for key, m in _MODE_KEYS.items() if cfg.get(key)]
    if len(chosen) != 1:
        raise ValueError(f"unsupported pooling config in {path}: {cfg}")
    return chosen[0]


def pool(hidden: torch.Tensor, batch: PackedBatch, mode: PoolingMode) -> torch.Tensor:
    if mode is PoolingMode.CLS:
        return hidden.index_select(0, batch.row_starts)
    if mode is PoolingMode.MAX:
        out = hidden.new_full((batch.rows, hidden.shape[1]), float("-inf"))
        index = batch.row_of_token[:, None].expand_as(hidden)
        return out.scatter_reduce(0, index, hidden, reduce="amax")
    summed = hidden.new_zeros(batch.rows, hidden.shape[1]).index_add_(0, batch.row_of_token, hidden)
    return summed / batch.lengths[:, None].to(hidden.dtype)


def normalize_rows(vectors: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """L2-normalize only the rows flagged in `rows` (bool [n])."""
    if not bool(rows.any()):
        return vectors
    normed = F.normalize(vectors, p=2, dim=1)
    return torch.where(rows[:, None], normed, vectors)
