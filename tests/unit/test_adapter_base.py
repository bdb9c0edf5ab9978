"""Which base model an adapter was trained on (common/adapter_check.py): judged by what can be
checked (known spellings of the base's name, module shapes), on real PEFT adapters saved from a
tiny random BERT at other paths, as PEFT records them."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import torch

from common import errors
from common.adapter_check import AdapterRules
from common.adapters import CONFIG_FILE
from common.settings import AdapterSettings, BaseMismatchPolicy
from tests.unit.support import PEFT_WARNINGS, base_info_for, edit_config
from worker.adapter_files import read_adapter
from worker.engine.types import BaseModelInfo

pytestmark = [PEFT_WARNINGS, pytest.mark.usefixtures("single_torch_thread")]

DEFAULT_RULES = AdapterRules(16, 10_000_000, AdapterSettings().base_mismatch)
STRICT_RULES = AdapterRules(16, 10_000_000, BaseMismatchPolicy.REFUSE)


def _read(adapter_dir: Path, base: BaseModelInfo, rules: AdapterRules) -> Any:
    return read_adapter("org/test", adapter_dir, base, rules)


def _with_base(path: Path, name: str) -> Path:
    edit_config(path, base_model_name_or_path=name)
    return path


def _trained_from(model_dir: Path, out: Path, **lora: Any) -> Path:
    """A PEFT adapter made from the model PEFT loads at `model_dir`, saved as PEFT saves it."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel

    torch.manual_seed(1)
    model = get_peft_model(
        AutoModel.from_pretrained(model_dir), LoraConfig(init_lora_weights=False, **lora)
    )
    model.save_pretrained(out)
    assert json.loads((out / CONFIG_FILE).read_text())["base_model_name_or_path"] == str(model_dir)
    return out


@pytest.fixture
def served(tmp_path, make_base) -> tuple[Path, BaseModelInfo]:
    """The tiny model as a worker serves it: from this venv's site-packages, under a hub id."""
    model_dir = tmp_path / "venv-worker/lib/python3.11/site-packages/tinypkg/model"
    make_base().save_pretrained(model_dir)
    return model_dir, base_info_for(make_base(), model_id="org/tiny", aliases=(str(model_dir),))


@pytest.mark.slow
def test_same_package_in_another_site_packages_accepted(tmp_path, make_base, served, caplog):
    """The operator trap of issue 14: the same bundled model, installed in another venv."""
    _, base = served
    trainer_copy = tmp_path / "venv-trainer/lib/python3.12/site-packages/tinypkg/model"
    make_base().save_pretrained(trainer_copy)
    path = _trained_from(trainer_copy, tmp_path / "a", r=2, target_modules=["query"])
    for rules in (DEFAULT_RULES, STRICT_RULES):
        with caplog.at_level(logging.WARNING, logger="common.adapter_check"):
            assert len(_read(path, base, rules).modules) == 2
    assert not caplog.records, "a known spelling of the base is no mismatch"


@pytest.mark.parametrize(
    "name",
    [
        "ORG/Tiny",
        "/home/me/.cache/huggingface/hub/models--org--tiny/snapshots/0123abcd",
        "/home/me/.cache/huggingface/hub/models--org--tiny/snapshots/0123abcd/",
    ],
)
def test_hub_id_spellings_accepted_strictly(make_adapter, served, name: str) -> None:
    _, base = served
    path = _with_base(make_adapter("hubname", r=2, target_modules=["query"]), name)
    assert len(_read(path, base, STRICT_RULES).modules) == 2


def test_other_path_same_shapes_accepted_by_default(tmp_path, make_base, served, caplog):
    _, base = served
    copy = tmp_path / "data/models/minilm-copy"
    make_base().save_pretrained(copy)
    path = _trained_from(copy, tmp_path / "a", r=2, target_modules=["query"])
    with caplog.at_level(logging.WARNING, logger="common.adapter_check"):
        assert len(_read(path, base, DEFAULT_RULES).modules) == 2
    assert any("minilm-copy" in r.getMessage() for r in caplog.records)
    with pytest.raises(errors.AdapterBaseMismatch, match="not a known name"):
        _read(path, base, STRICT_RULES)


def test_other_base_with_other_shapes_is_base_mismatch(tmp_path, make_base, served) -> None:
    """Refused for what really differs, and the message says which check failed."""
    _, base = served
    wide = tmp_path / "models/wide"
    make_base(hidden_size=48).save_pretrained(wide)
    path = _trained_from(wide, tmp_path / "a", r=2, target_modules=["query"])
    with pytest.raises(errors.AdapterBaseMismatch, match=r"expected A \(2, 32\)") as info:
        _read(path, base, DEFAULT_RULES)
    assert "models/wide" in info.value.message
