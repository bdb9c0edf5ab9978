"""Shared fixtures of the unit tests: tiny random encoders, PEFT adapters saved from them, and
the `BaseModelInfo` the worker would derive from such an encoder."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

#: Silences a transformers FutureWarning that PEFT triggers (pyproject turns warnings into
#: errors); modules that build PEFT models add this to their `pytestmark`.
PEFT_WARNINGS = pytest.mark.filterwarnings(
    "ignore:.*is_gradient_checkpointing.*:FutureWarning",
)


@pytest.fixture(scope="module")
def single_torch_thread() -> Iterator[None]:
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core box the thread
    pool's spinning makes each small op orders of magnitude slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


TINY = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "vocab_size": 100,
    "max_position_embeddings": 64,
}

BASE_ID = "tiny/base"


def _build(kind: str, seed: int, overrides: dict[str, Any]) -> Any:
    import torch
    from transformers import BertConfig, BertModel, XLMRobertaConfig, XLMRobertaModel

    torch.manual_seed(seed)
    kwargs = {**TINY, **overrides}
    if kind == "bert":
        model = BertModel(BertConfig(**kwargs))
    elif kind == "xlmr":
        model = XLMRobertaModel(XLMRobertaConfig(pad_token_id=1, **kwargs))
    else:
        raise ValueError(kind)
    return model.eval()


@pytest.fixture
def make_base() -> Callable[..., Any]:
    """`make_base(kind="bert"|"xlmr", seed=0, **config)`: the same seed gives the same weights,
    so a fresh copy of a base can be rebuilt at will."""

    def make(kind: str = "bert", seed: int = 0, **overrides: Any) -> Any:
        return _build(kind, seed, overrides)

    return make


def base_info_for(model: Any, model_id: str = BASE_ID, aliases: tuple[str, ...] = ()) -> Any:
    """What `Engine.base_model_info` gives for a transformers model, without a model dir."""
    from worker.engine.encoder import PackedEncoder
    from worker.engine.types import BaseModelInfo

    modules = PackedEncoder(model).target_modules()
    return BaseModelInfo(model_id, frozenset({model_id, *aliases}), modules)


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


def edit_config(adapter_dir: Path, **changes: Any) -> None:
    path = adapter_dir / "adapter_config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def blocked_in(thread: threading.Thread, caller: str, callee: str) -> bool:
    """True when `thread` is inside `callee` called from `caller` (e.g. a future's `result`
    called from `_weights`): lets a test know a thread reached a blocking point."""
    frame = sys._current_frames().get(thread.ident or -1)
    while frame is not None:
        parent = frame.f_back
        if (
            parent is not None
            and frame.f_code.co_name == callee
            and parent.f_code.co_name == caller
        ):
            return True
        frame = parent
    return False
