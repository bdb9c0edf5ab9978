"""Helpers of the unit tests (the fixtures built on them are in conftest.py): tiny random
encoders, the `BaseModelInfo` the worker derives from one, adapter config edits, and a probe for
where a thread is blocked."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

#: Silences a transformers FutureWarning that PEFT triggers (pyproject turns warnings into
#: errors); modules that build PEFT models add this to their `pytestmark`.
PEFT_WARNINGS = pytest.mark.filterwarnings(
    "ignore:.*is_gradient_checkpointing.*:FutureWarning",
)


TINY = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "vocab_size": 100,
    "max_position_embeddings": 64,
}

BASE_ID = "tiny/base"


def build_tiny(kind: str, seed: int, overrides: dict[str, Any]) -> Any:
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


def base_info_for(model: Any, model_id: str = BASE_ID, aliases: tuple[str, ...] = ()) -> Any:
    """What `Engine.base_model_info` gives for a transformers model, without a model dir."""
    from worker.engine.encoder import PackedEncoder
    from worker.engine.types import BaseModelInfo

    modules = PackedEncoder(model).target_modules()
    return BaseModelInfo(model_id, frozenset({model_id, *aliases}), modules)


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
