"""Reading a local HF model directory's tokenizer and length limit, shared by the gateway (to
tokenize at submit, and refuse over-long texts when `truncate` is false) and the worker."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
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


@dataclass(frozen=True)
class ModelTokenizer:
    """A model's tokenizer, truncating at the model's limit (an over-long text shows up as
    `overflowing`). `id` is a digest of the tokenizer file and the limit: equal ids make equal
    token ids, so a worker can take the gateway's (`common.token_ids`)."""

    tokenizer: Tokenizer
    limit: int
    id: str

    def ids(self, texts: list[str], truncate: bool) -> list[list[int]]:
        """Token ids per text; with `truncate` false an over-long text is refused instead."""
        encodings = self.tokenizer.encode_batch(texts)
        if not truncate:
            _check_not_truncated(encodings, self.limit)
        return [enc.ids for enc in encodings]


def load_tokenizer(model_dir: Path) -> ModelTokenizer:
    raw = (model_dir / "tokenizer.json").read_bytes()
    limit = max_length(model_dir)
    tokenizer = Tokenizer.from_str(raw.decode())
    tokenizer.no_padding()
    tokenizer.enable_truncation(limit)
    digest = hashlib.sha256(raw + f"\0{limit}".encode()).hexdigest()[:16]
    return ModelTokenizer(tokenizer, limit, digest)


def _check_not_truncated(encodings: list[Encoding], limit: int) -> None:
    for i, enc in enumerate(encodings):
        if enc.overflowing:
            raise InputTooLong(
                f"item {i} is longer than the model's {limit} tokens and truncate is false"
            )


@dataclass(frozen=True)
class LinearShape:
    in_features: int
    out_features: int


@dataclass(frozen=True)
class BaseDescription:
    """A base model as adapter validation sees it (`common.adapter_check.BaseModelInfo`), read
    from its config where the model is not loaded (the gateway checks uploads with it). The
    module names are the worker engine's: a test holds the two descriptions equal."""

    model_id: str
    aliases: frozenset[str]
    modules: dict[str, LinearShape]


def describe_base(model_id: str, model_dir: Path) -> BaseDescription:
    config = json.loads((model_dir / "config.json").read_text())
    d, ff = int(config["hidden_size"]), int(config["intermediate_size"])
    per_layer = {
        "attention.self.query": LinearShape(d, d),
        "attention.self.key": LinearShape(d, d),
        "attention.self.value": LinearShape(d, d),
        "attention.output.dense": LinearShape(d, d),
        "intermediate.dense": LinearShape(d, ff),
        "output.dense": LinearShape(ff, d),
    }
    modules = {
        f"encoder.layer.{i}.{name}": shape
        for i in range(int(config["num_hidden_layers"]))
        for name, shape in per_layer.items()
    }
    return BaseDescription(model_id, frozenset({model_id, str(model_dir)}), modules)
