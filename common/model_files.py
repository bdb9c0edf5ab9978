"""Reading a local HF model directory's tokenizer and length limit, shared by the gateway (to
refuse over-long texts at submit when `truncate` is false) and the worker (to encode)."""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Encoding, Tokenizer

from common.errors import InputTooLong

_ROBERTA_LIKE = ("roberta", "xlm-roberta")


def max_length(model_dir: Path) -> int:
    """The sentence-transformers `max_seq_length` if set, capped by the position table."""
    config = json.loads((model_dir / "config.json").read_text())
    positions = int(config["max_position_embeddings"])
    if config.get("model_type") in _ROBERTA_LIKE:
        positions -= int(config.get("pad_token_id", 1)) + 1
    st_file = model_dir / "sentence_bert_config.json"
    if st_file.exists() and (st_len := json.loads(st_file.read_text()).get("max_seq_length")):
        return min(int(st_len), positions)
    return positions


def load_tokenizer(model_dir: Path) -> Tokenizer:
    """Truncating at the model's limit; an over-long text shows up as `overflowing`."""
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length(model_dir))
    return tokenizer


def check_not_truncated(encodings: list[Encoding], limit: int) -> None:
    for i, enc in enumerate(encodings):
        if enc.overflowing:
            raise InputTooLong(
                f"item {i} is longer than the model's {limit} tokens and truncate is false"
            )
