"""What crosses the engine's boundary, apart from tensors: the rows it encodes and its
description of the base model. They live here, inside the engine, so the worker's modules
around it (batcher, adapter validation) depend on the engine and never the other way round."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

#: Called by a forward between its steps (each of a layer's linears and its attention): the
#: batcher runs interactive rows that came meanwhile there, so a long forward of batch chunks
#: holds them up for one step instead of the whole forward.
Pause = Callable[[], None]


def no_pause() -> None:
    """The pause of a forward nothing may interrupt."""


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
