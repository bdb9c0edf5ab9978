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
