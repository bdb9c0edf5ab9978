"""LoRA training and the demo data, on a tiny random BERT so the mechanics are checked in seconds;
whether the real demo adapters help is test_demo_quality's job."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from common.adapters import CONFIG_FILE, WEIGHTS_FILE
from common.schemas import validate_lora_id
from loraq import training
from loraq.demo_data import DOMAINS
from loraq.testing import save_tiny_model
from loraq.training import create_demo_adapters, demo_lora_id, train_lora

pytestmark = [
    pytest.mark.slow,
    # PEFT 0.21 probes a property that transformers 5 deprecated; nothing we can act on.
    pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning"),
]

BASE_ID = "example/tiny-bert"
PAIRS = [
    ("my landlord kept my deposit", "A lessor must refund the security deposit."),
    ("can my boss fire me for no reason", "Employment is terminable at will."),
    ("who inherits if there is no will", "An intestate estate passes to the heirs."),
    ("can police search my car", "A warrantless search is presumptively unreasonable."),
]


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny-bert"))


def _embed(model: Any, model_dir: Path, texts: list[str]) -> torch.Tensor:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    with torch.no_grad():
        encoded = tokenizer(texts, padding=True, return_tensors="pt")
        states: torch.Tensor = model(**encoded).last_hidden_state
    return states


def test_train_lora_saves_a_peft_adapter_that_changes_outputs(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from peft import PeftModel
    from transformers import AutoModel

    out = tmp_path / "adapter"
    stats = train_lora(tiny_model_dir, PAIRS, out, base_model_id=BASE_ID, epochs=1, batch_size=2)

    assert stats["steps"] == 2
    assert stats["pairs"] == len(PAIRS)
    assert math.isfinite(stats["final_loss"])
    assert (out / CONFIG_FILE).is_file()
    assert (out / WEIGHTS_FILE).is_file()
    config = json.loads((out / CONFIG_FILE).read_text())
    assert config["peft_type"] == "LORA"
    assert config["base_model_name_or_path"] == BASE_ID
    assert config["r"] == 8
    assert config["lora_alpha"] == 16
    assert sorted(config["target_modules"]) == ["key", "query", "value"]

    tensors = load_file(out / WEIGHTS_FILE)
    lora_b = [t for name, t in tensors.items() if ".lora_B." in name]
    assert len(lora_b) == 3 * 2
    assert all(t.abs().sum() > 0 for t in lora_b)

    texts = [query for query, _ in PAIRS]
    base_states = _embed(AutoModel.from_pretrained(tiny_model_dir).eval(), tiny_model_dir, texts)
    adapted = PeftModel.from_pretrained(AutoModel.from_pretrained(tiny_model_dir), out).eval()
    adapted_states = _embed(adapted, tiny_model_dir, texts)
    assert not torch.allclose(base_states, adapted_states, atol=1e-4)


def test_train_lora_is_reproducible_and_leaves_global_state_alone(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    rng_before, threads_before = torch.random.get_rng_state(), torch.get_num_threads()
    for name in ("a", "b"):
        train_lora(
            tiny_model_dir,
            PAIRS,
            tmp_path / name,
            base_model_id=BASE_ID,
            epochs=2,
            batch_size=2,
            seed=7,
            num_threads=1,
        )

    first, second = (load_file(tmp_path / name / WEIGHTS_FILE) for name in ("a", "b"))
    assert first.keys() == second.keys()
    assert all(torch.equal(first[key], second[key]) for key in first)
    assert torch.equal(torch.random.get_rng_state(), rng_before)
    assert torch.get_num_threads() == threads_before


def test_train_lora_refuses_no_pairs(tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one"):
        train_lora(tiny_model_dir, [], tmp_path / "adapter", base_model_id=BASE_ID)


def test_create_demo_adapters_trains_each_domain_once(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = [f"demo/{domain.name}-lora" for domain in DOMAINS]
    stale = tmp_path / "demo" / f".{DOMAINS[0].name}-lora.partial"
    stale.mkdir(parents=True)
    (stale / CONFIG_FILE).write_text("{}")

    assert create_demo_adapters(tmp_path, tiny_model_dir, BASE_ID) == expected
    for lora_id in expected:
        config = json.loads((tmp_path / lora_id / CONFIG_FILE).read_text())
        assert config["base_model_name_or_path"] == BASE_ID
        assert (tmp_path / lora_id / WEIGHTS_FILE).is_file()
    assert not stale.exists()

    def must_not_train(*args: object, **kwargs: object) -> None:
        raise AssertionError("an existing demo adapter was retrained")

    monkeypatch.setattr(training, "train_lora", must_not_train)
    assert create_demo_adapters(tmp_path, tiny_model_dir, BASE_ID) == expected


def test_demo_data_is_consistent() -> None:
    assert len({domain.name for domain in DOMAINS}) == len(DOMAINS)
    for domain in DOMAINS:
        validate_lora_id(demo_lora_id(domain.name))
        assert len(set(domain.passages)) == len(domain.passages)
        for query, gold in (*domain.train, *domain.held_out):
            assert 0 <= gold < len(domain.passages), (domain.name, query)
        train_queries = [query for query, _ in domain.train]
        assert len(set(train_queries)) == len(train_queries)
        held_out_queries = {query for query, _ in domain.held_out}
        assert len(held_out_queries) == len(domain.held_out)
        assert not held_out_queries & set(train_queries)
        # Held-out queries are new wordings of trained passages, so they measure generalization
        # over phrasing rather than recall of passages the adapter never saw.
        assert {gold for _, gold in domain.held_out} <= {gold for _, gold in domain.train}
        assert domain.train_pairs()[0] == (domain.train[0][0], domain.passages[domain.train[0][1]])
