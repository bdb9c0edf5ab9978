"""What crosses the engine's boundary, apart from tensors: the rows it encodes and its
description of the base model. They live here, inside the engine, so the worker's modules
around it (batcher, adapter validation) depend on the engine and never the other way round."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Row:
    """One item to encode: its tokens, its adapter's slot (None: base model), L2 or not."""

    tokens: list[int]
    slot: int | None
    normalize: bool


@dataclass(frozen=True)
class ModuleShape:
    in_features: int
    out_features: int


@dataclass(frozen=True)
class BaseModelInfo:
    """What adapter validation needs to know of the base model."""

    model_id: str
    aliases: frozenset[str]
    modules: dict[str, ModuleShape]  # canonical LoRA-targetable linears
