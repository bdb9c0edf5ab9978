"""The served model's texts side, which the engine leaves to the worker.

The engine takes rows of token ids and nothing else, so it needs neither the tokenizer nor the
request's options. Task threads call `tokenize` (CPU work that overlaps the batch thread's
forward pass) when a message carries no usable token ids from the gateway (`JobRunner._tokens`).
"""

from __future__ import annotations

from pathlib import Path

from common.model_files import load_tokenizer


class WorkerTokenizer:
    """The model's tokenizer, with the facts about the model the job runner needs besides: its
    id (to refuse jobs for another model) and whether it normalizes when a job does not say."""

    def __init__(self, model_id: str, model_dir: Path, default_normalize: bool) -> None:
        loaded = load_tokenizer(model_dir)
        self.model_id = model_id
        self.default_normalize = default_normalize
        self.tokenizer_id = loaded.id
        self.tokenize = loaded.ids
