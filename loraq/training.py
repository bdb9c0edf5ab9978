"""A short, real LoRA fine-tune so the demo's adapters are honest ones, not random weights.

Random or hand-made LoRA weights would move embeddings, but not in any direction a viewer could
judge. Training on (layman query, technical passage) pairs with in-batch negatives gives adapters
whose effect shows up as better top-1 retrieval on queries they never saw.

Both MiniLM demo adapters train in well under a minute on two CPU cores, from a local model dir
(no hub access), and are saved in PEFT's own format so the worker loads them exactly as it loads
anyone else's.
"""

from __future__ import annotations

import random
import shutil
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypedDict

import torch
import torch.nn.functional as F

from common.adapters import CONFIG_FILE, WEIGHTS_FILE, adapter_path
from loraq.demo_data import DOMAINS

MAX_LENGTH = 256
#: Cosine similarities live in [-1, 1]; scaling them makes the softmax sharp enough to learn
#: from, as sentence-transformers' MultipleNegativesRankingLoss does.
SIMILARITY_SCALE = 20.0


class TrainStats(TypedDict):
    pairs: int
    steps: int
    final_loss: float
    seconds: float


def demo_lora_id(domain: str) -> str:
    return f"demo/{domain}-lora"


def train_lora(
    model_dir: Path,
    pairs: Sequence[tuple[str, str]],
    out_dir: Path,
    *,
    base_model_id: str,
    rank: int = 8,
    alpha: int = 16,
    target_modules: Sequence[str] = ("query", "key", "value"),
    epochs: int = 8,
    batch_size: int = 20,
    lr: float = 1e-3,
    seed: int = 0,
    num_threads: int | None = None,
) -> TrainStats:
    """Fine-tune a LoRA on (query, positive passage) pairs and save it in PEFT's format.

    The global torch RNG is forked so seeding for reproducibility leaves the caller's RNG alone;
    the thread count is restored for the same reason.
    """
    if not pairs:
        raise ValueError("train_lora needs at least one (query, passage) pair")
    threads_before = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return _train(
                model_dir,
                list(pairs),
                out_dir,
                base_model_id=base_model_id,
                rank=rank,
                alpha=alpha,
                target_modules=list(target_modules),
                epochs=epochs,
                batch_size=batch_size,
                lr=lr,
                seed=seed,
            )
    finally:
        torch.set_num_threads(threads_before)


def _train(
    model_dir: Path,
    pairs: list[tuple[str, str]],
    out_dir: Path,
    *,
    base_model_id: str,
    rank: int,
    alpha: int,
    target_modules: list[str],
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
) -> TrainStats:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    started = time.perf_counter()
    tokenizer: Any = AutoTokenizer.from_pretrained(model_dir)
    base: Any = AutoModel.from_pretrained(model_dir)
    # PEFT records where the base model was loaded from, in the adapter config and model card;
    # adapters must name the id the worker checks, not wherever this copy happened to live.
    base.name_or_path = base.config.name_or_path = base_model_id
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        target_modules=target_modules,
        lora_dropout=0.0,
        bias="none",
    )
    with warnings.catch_warnings():
        # PEFT wrapping a transformers 5 model reads a deprecated alias (see pyproject).
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing`", FutureWarning)
        model: Any = get_peft_model(base, config)
    model.train()
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0
    )
    order = random.Random(seed)
    steps, loss_value = 0, float("nan")
    for _ in range(epochs):
        batch_order = list(range(len(pairs)))
        order.shuffle(batch_order)
        for start in range(0, len(batch_order), batch_size):
            batch = [pairs[i] for i in batch_order[start : start + batch_size]]
            loss = _ranking_loss(model, tokenizer, batch)
            optimizer.zero_grad()
            torch.autograd.backward(loss)
            optimizer.step()
            steps += 1
            loss_value = float(loss.detach())
    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    # Nothing targets the embeddings, and "auto" would look the base model id up on the hub.
    model.save_pretrained(out_dir, save_embedding_layers=False)
    return TrainStats(
        pairs=len(pairs),
        steps=steps,
        final_loss=loss_value,
        seconds=round(time.perf_counter() - started, 3),
    )


def _ranking_loss(model: Any, tokenizer: Any, batch: list[tuple[str, str]]) -> torch.Tensor:
    """MultipleNegativesRankingLoss over the batch's distinct passages: several demo queries
    share a gold passage, and a copy of a query's own positive must not count as its negative.
    Embedding each passage once also makes the step cheaper."""
    passages = list(dict.fromkeys(passage for _, passage in batch))
    labels = torch.tensor([passages.index(passage) for _, passage in batch])
    queries = _embed(model, tokenizer, [query for query, _ in batch])
    logits = SIMILARITY_SCALE * queries @ _embed(model, tokenizer, passages).T
    return F.cross_entropy(logits, labels)


def _embed(model: Any, tokenizer: Any, texts: list[str]) -> torch.Tensor:
    """Mean pooling over the attention mask then L2 norm, as MiniLM's sentence-transformers
    pipeline does, so training optimizes the embedding the worker actually serves."""
    encoded = tokenizer(
        texts, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt"
    )
    states = model(**encoded).last_hidden_state
    mask = encoded["attention_mask"].unsqueeze(-1).to(states.dtype)
    pooled = (states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
    return F.normalize(pooled, p=2, dim=-1)


def create_demo_adapters(
    out_root: Path,
    model_dir: Path,
    base_model_id: str,
    *,
    num_threads: int | None = None,
) -> list[str]:
    """Train the demo adapters that are not already under `out_root`, returning all their ids.

    Each adapter is trained into a scratch dir and renamed into place, so an interrupted run never
    leaves a half-written adapter that a later run would mistake for a finished one.
    """
    lora_ids = []
    for domain in DOMAINS:
        lora_id = demo_lora_id(domain.name)
        target = adapter_path(out_root, lora_id)
        lora_ids.append(lora_id)
        if (target / CONFIG_FILE).is_file() and (target / WEIGHTS_FILE).is_file():
            continue
        scratch = target.with_name(f".{target.name}.partial")
        shutil.rmtree(scratch, ignore_errors=True)
        train_lora(
            model_dir,
            domain.train_pairs(),
            scratch,
            base_model_id=base_model_id,
            seed=domain.seed,
            num_threads=num_threads,
        )
        shutil.rmtree(target, ignore_errors=True)
        scratch.rename(target)
    return lora_ids
