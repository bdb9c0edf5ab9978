"""Shared fixtures of the unit tests: tiny random encoders, PEFT adapters saved from them, and
the `BaseModelInfo` the worker would derive from such an encoder."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.unit.support import base_info_for, build_tiny


@pytest.fixture(scope="module")
def single_torch_thread() -> Iterator[None]:
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core box the thread
    pool's spinning makes each small op orders of magnitude slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def make_base() -> Callable[..., Any]:
    """`make_base(kind="bert"|"xlmr", seed=0, **config)`: the same seed gives the same weights,
    so a fresh copy of a base can be rebuilt at will."""

    def make(kind: str = "bert", seed: int = 0, **overrides: Any) -> Any:
        return build_tiny(kind, seed, overrides)

    return make


@pytest.fixture
def tiny_base_info(make_base: Callable[..., Any]) -> Any:
    return base_info_for(make_base("bert"))


@pytest.fixture
def make_adapter(tmp_path: Path, make_base: Callable[..., Any]) -> Callable[..., Path]:
    """`make_adapter(name, kind="bert", base_seed=0, seed=1, base_overrides=None, **lora)`:
    a PEFT LoRA (random A and B) saved with `save_pretrained` under `tmp_path/name`."""

    def make(
        name: str,
        kind: str = "bert",
        base_seed: int = 0,
        seed: int = 1,
        base_overrides: dict[str, Any] | None = None,
        peft_config: Any = None,
        **lora: Any,
    ) -> Path:
        import torch
        from peft import LoraConfig, get_peft_model

        model = make_base(kind, base_seed, **(base_overrides or {}))
        lora.setdefault("init_lora_weights", False)
        config = peft_config if peft_config is not None else LoraConfig(**lora)
        torch.manual_seed(seed)
        # init_lora_weights=False: A and B keep nn.Linear's random init, so B is not zero.
        peft_model = get_peft_model(model, config)
        out = tmp_path / name
        peft_model.save_pretrained(out)
        return out

    return make
