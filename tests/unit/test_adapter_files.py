"""Adapter validation (common/adapter_check.py, through the worker's read_adapter) on real PEFT
adapters of a tiny random BERT."""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from common import errors
from common.adapter_check import MAX_SCALE, AdapterRules
from common.adapters import CONFIG_FILE, PICKLE_FILE, WEIGHTS_FILE
from common.settings import BaseMismatchPolicy
from tests.unit.support import BASE_ID, PEFT_WARNINGS, edit_config
from worker.adapter_files import read_adapter
from worker.engine.types import BaseModelInfo

pytestmark = [pytest.mark.unit, PEFT_WARNINGS, pytest.mark.usefixtures("single_torch_thread")]

RULES = AdapterRules(
    max_rank=16, max_file_bytes=10_000_000, base_mismatch=BaseMismatchPolicy.REFUSE
)
PREFIX = "base_model.model."
L0 = "encoder.layer.0."


def _saved(adapter_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(adapter_dir / WEIGHTS_FILE)


def _resave(adapter_dir: Path, tensors: dict[str, torch.Tensor]) -> None:
    save_file(tensors, adapter_dir / WEIGHTS_FILE, metadata={"format": "pt"})


def _read(adapter_dir: Path, base: BaseModelInfo, rules: AdapterRules = RULES) -> Any:
    return read_adapter("org/test", adapter_dir, base, rules)


def test_reads_plain_adapter(make_adapter, tiny_base_info) -> None:
    path = make_adapter("plain", r=4, lora_alpha=8, target_modules=["query", "value"])
    weights = _read(path, tiny_base_info)
    assert weights.lora_id == "org/test"
    assert set(weights.modules) == {
        f"encoder.layer.{i}.attention.self.{m}" for i in range(2) for m in ("query", "value")
    }
    assert weights.rank == 4
    saved = _saved(path)
    for name, w in weights.modules.items():
        a, b = saved[f"{PREFIX}{name}.lora_A.weight"], saved[f"{PREFIX}{name}.lora_B.weight"]
        assert w.a.shape == (4, 32) and w.b.shape == (32, 4)
        assert w.a.dtype == w.b.dtype == torch.float32
        torch.testing.assert_close(w.a, a, rtol=0, atol=0)
        torch.testing.assert_close(w.b, b * (8 / 4), rtol=1e-6, atol=0)
        assert w.a.is_contiguous() and w.b.is_contiguous()
        assert bool(b.abs().sum() > 0)  # init_lora_weights=False: a real, non-zero delta


def test_all_linear_targets(make_adapter, tiny_base_info) -> None:
    path = make_adapter(
        "all",
        r=2,
        lora_alpha=2,
        target_modules=[
            *("query", "key", "value"),
            *("attention.output.dense", "intermediate.dense", "output.dense"),
        ],
    )
    weights = _read(path, tiny_base_info)
    assert set(weights.modules) == set(tiny_base_info.modules)
    inter = weights.modules[L0 + "intermediate.dense"]
    out = weights.modules[L0 + "output.dense"]
    assert inter.a.shape == (2, 32) and inter.b.shape == (64, 2)
    assert out.a.shape == (2, 64) and out.b.shape == (32, 2)


# -- one test per refusal code ---------------------------------------------------------------


def test_ia3_adapter_is_not_lora(make_adapter, tiny_base_info) -> None:
    from peft import IA3Config

    config = IA3Config(target_modules=["key", "value", "output.dense"], feedforward_modules=[])
    path = make_adapter("ia3", peft_config=config)
    assert json.loads((path / CONFIG_FILE).read_text())["peft_type"] == "IA3"
    with pytest.raises(errors.AdapterNotLora) as info:
        _read(path, tiny_base_info)
    assert info.value.code == "ADAPTER_NOT_LORA"


@pytest.mark.parametrize("peft_type", ["PREFIX_TUNING", "lora", None])
def test_other_peft_types_are_not_lora(make_adapter, tiny_base_info, peft_type) -> None:
    path = make_adapter("p", r=2, target_modules=["query"])
    edit_config(path, peft_type=peft_type)
    with pytest.raises(errors.AdapterNotLora):
        _read(path, tiny_base_info)


def test_config_not_json_is_config_invalid(make_adapter, tiny_base_info) -> None:
    path = make_adapter("badjson", r=2, target_modules=["query"])
    (path / CONFIG_FILE).write_text("{not json")
    with pytest.raises(errors.AdapterConfigInvalid, match="not JSON"):
        _read(path, tiny_base_info)


def test_pickle_only_is_unsafe(make_adapter, tiny_base_info) -> None:
    path = make_adapter("pickle", r=2, target_modules=["query"])
    torch.save(_saved(path), path / PICKLE_FILE)
    (path / WEIGHTS_FILE).unlink()
    with pytest.raises(errors.AdapterUnsafeFormat) as info:
        _read(path, tiny_base_info)
    assert info.value.code == "ADAPTER_UNSAFE_FORMAT"


def test_pickle_next_to_safetensors_is_ignored(make_adapter, tiny_base_info) -> None:
    path = make_adapter("both", r=2, target_modules=["query"])
    (path / PICKLE_FILE).write_bytes(b"not even a pickle")
    assert set(_read(path, tiny_base_info).modules) == {
        f"encoder.layer.{i}.attention.self.query" for i in range(2)
    }


def test_no_weights_file_is_tensors_mismatch(make_adapter, tiny_base_info) -> None:
    path = make_adapter("noweights", r=2, target_modules=["query"])
    (path / WEIGHTS_FILE).unlink()
    with pytest.raises(errors.AdapterTensorsMismatch):
        _read(path, tiny_base_info)


def test_missing_lora_b_is_tensors_mismatch(make_adapter, tiny_base_info) -> None:
    path = make_adapter("nob", r=2, target_modules=["query", "value"])
    tensors = _saved(path)
    del tensors[f"{PREFIX}{L0}attention.self.value.lora_B.weight"]
    _resave(path, tensors)
    with pytest.raises(errors.AdapterTensorsMismatch, match="value") as info:
        _read(path, tiny_base_info)
    assert info.value.code == "ADAPTER_TENSORS_MISMATCH"


@pytest.mark.parametrize(
    "extra",
    [
        "base_model.model.encoder.layer.0.attention.self.query.lora_magnitude_vector",
        "base_model.model.encoder.layer.0.attention.self.query.base_layer.weight",
        "something_else",
    ],
)
def test_unknown_tensor_is_tensors_mismatch(make_adapter, tiny_base_info, extra: str) -> None:
    path = make_adapter("extra", r=2, target_modules=["query"])
    tensors = _saved(path)
    tensors[extra] = torch.zeros(32)
    _resave(path, tensors)
    with pytest.raises(errors.AdapterTensorsMismatch, match="unexpected tensor"):
        _read(path, tiny_base_info)


def test_unreadable_safetensors_is_tensors_mismatch(make_adapter, tiny_base_info) -> None:
    path = make_adapter("garbage", r=2, target_modules=["query"])
    (path / WEIGHTS_FILE).write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00garbage!")
    with pytest.raises(errors.AdapterTensorsMismatch, match="unreadable"):
        _read(path, tiny_base_info)


def test_empty_safetensors_is_tensors_mismatch(make_adapter, tiny_base_info) -> None:
    path = make_adapter("empty", r=2, target_modules=["query"])
    _resave(path, {})
    with pytest.raises(errors.AdapterTensorsMismatch, match="no LoRA tensors"):
        _read(path, tiny_base_info)


def test_other_hidden_size_is_shape_mismatch(make_adapter, tiny_base_info) -> None:
    path = make_adapter(
        "wide",
        r=4,
        target_modules=["query"],
        base_overrides={"hidden_size": 48, "num_attention_heads": 2},
    )
    with pytest.raises(errors.AdapterShapeMismatch) as info:
        _read(path, tiny_base_info)
    assert info.value.code == "ADAPTER_SHAPE_MISMATCH"


def test_rank_disagreeing_with_config_is_shape_mismatch(make_adapter, tiny_base_info) -> None:
    path = make_adapter("rank", r=4, target_modules=["query"])
    edit_config(path, r=3)
    with pytest.raises(errors.AdapterShapeMismatch):
        _read(path, tiny_base_info)


def test_rank_above_max_is_refused(make_adapter, tiny_base_info) -> None:
    path = make_adapter("highrank", r=8, lora_alpha=8, target_modules=["query"])
    rules = AdapterRules(max_rank=4, max_file_bytes=10**8, base_mismatch=BaseMismatchPolicy.REFUSE)
    with pytest.raises(errors.AdapterRankTooHigh) as info:
        _read(path, tiny_base_info, rules)
    assert info.value.code == "ADAPTER_RANK_TOO_HIGH"
    exact = AdapterRules(max_rank=8, max_file_bytes=10**8, base_mismatch=BaseMismatchPolicy.REFUSE)
    assert _read(path, tiny_base_info, exact).rank == 8


def test_rank_pattern_above_max_is_refused(make_adapter, tiny_base_info) -> None:
    path = make_adapter(
        "pattern_high", r=2, target_modules=["query", "value"], rank_pattern={"value": 6}
    )
    rules = AdapterRules(max_rank=4, max_file_bytes=10**8, base_mismatch=BaseMismatchPolicy.REFUSE)
    with pytest.raises(errors.AdapterRankTooHigh):
        _read(path, tiny_base_info, rules)


def test_target_missing_from_config(make_adapter, tiny_base_info) -> None:
    path = make_adapter("qproj", r=2, target_modules=["query"])
    edit_config(path, target_modules=["q_proj"])
    with pytest.raises(errors.AdapterTargetMissing, match="q_proj") as info:
        _read(path, tiny_base_info)
    assert info.value.code == "ADAPTER_TARGET_MISSING"


def test_target_missing_from_tensors(make_adapter, tiny_base_info) -> None:
    """An adapter of a deeper model has tensors for layers the base lacks."""
    path = make_adapter(
        "deep", r=2, target_modules=["query"], base_overrides={"num_hidden_layers": 3}
    )
    with pytest.raises(errors.AdapterTargetMissing, match=r"layer\.2\."):
        _read(path, tiny_base_info)


def _with_base(path: Path, name: str) -> Path:
    edit_config(path, base_model_name_or_path=name)
    return path


def test_other_base_refused(make_adapter, tiny_base_info) -> None:
    path = _with_base(make_adapter("other", r=2, target_modules=["query"]), "someone/else")
    with pytest.raises(errors.AdapterBaseMismatch, match="someone/else") as info:
        _read(path, tiny_base_info)
    assert info.value.code == "ADAPTER_BASE_MISMATCH"


def test_other_base_served_with_warn_policy(make_adapter, tiny_base_info, caplog) -> None:
    path = _with_base(make_adapter("other", r=2, target_modules=["query"]), "someone/else")
    rules = AdapterRules(max_rank=16, max_file_bytes=10**8, base_mismatch=BaseMismatchPolicy.WARN)
    with caplog.at_level(logging.WARNING, logger="common.adapter_check"):
        weights = _read(path, tiny_base_info, rules)
    assert len(weights.modules) == 2
    assert any("someone/else" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("name", [BASE_ID, "/models/tiny", None, ""])
def test_matching_or_unknown_base_accepted(make_adapter, make_base, name) -> None:
    from tests.unit.support import base_info_for

    base = base_info_for(make_base(), aliases=("/models/tiny",))
    path = _with_base(make_adapter("same", r=2, target_modules=["query"]), name)
    assert len(_read(path, base).modules) == 2


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("ab", ["A", "B"])
def test_non_finite_weights_refused(make_adapter, tiny_base_info, bad: float, ab: str) -> None:
    path = make_adapter("nan", r=2, target_modules=["query"])
    tensors = _saved(path)
    key = f"{PREFIX}encoder.layer.1.attention.self.query.lora_{ab}.weight"
    tensors[key][0, 1] = bad
    _resave(path, tensors)
    with pytest.raises(errors.AdapterNonFinite) as info:
        _read(path, tiny_base_info)
    assert info.value.code == "ADAPTER_NON_FINITE"


@pytest.mark.parametrize("limit_of", [WEIGHTS_FILE, CONFIG_FILE])
def test_oversize_file_refused(make_adapter, tiny_base_info, limit_of: str) -> None:
    path = make_adapter("big", r=8, target_modules=["query", "key", "value", "dense"])
    if limit_of == CONFIG_FILE:
        edit_config(path, notes="x" * 200_000)  # now the config is the larger file
    sizes = {name: (path / name).stat().st_size for name in (WEIGHTS_FILE, CONFIG_FILE)}
    other = CONFIG_FILE if limit_of == WEIGHTS_FILE else WEIGHTS_FILE
    assert sizes[limit_of] > sizes[other]
    limit = sizes[limit_of] - 1
    rules = AdapterRules(max_rank=16, max_file_bytes=limit, base_mismatch=BaseMismatchPolicy.REFUSE)
    with pytest.raises(errors.AdapterTooLarge, match=limit_of) as info:
        _read(path, tiny_base_info, rules)
    assert info.value.code == "ADAPTER_TOO_LARGE"
    at_limit = AdapterRules(
        max_rank=16, max_file_bytes=limit + 1, base_mismatch=BaseMismatchPolicy.REFUSE
    )
    assert _read(path, tiny_base_info, at_limit).rank == 8


def test_tiny_file_limit_refused(make_adapter, tiny_base_info) -> None:
    path = make_adapter("big", r=2, target_modules=["query"])
    rules = AdapterRules(max_rank=16, max_file_bytes=10, base_mismatch=BaseMismatchPolicy.REFUSE)
    with pytest.raises(errors.AdapterTooLarge):
        _read(path, tiny_base_info, rules)


def test_dora_unsupported(make_adapter, tiny_base_info) -> None:
    path = make_adapter("dora", r=2, target_modules=["query"], use_dora=True)
    with pytest.raises(errors.AdapterUnsupported, match="use_dora") as info:
        _read(path, tiny_base_info)
    assert info.value.code == "ADAPTER_UNSUPPORTED"


def test_trained_bias_unsupported(make_adapter, tiny_base_info) -> None:
    path = make_adapter("bias", r=2, target_modules=["query"], bias="lora_only")
    with pytest.raises(errors.AdapterUnsupported, match="bias"):
        _read(path, tiny_base_info)


@pytest.mark.parametrize(
    "change",
    [
        {"modules_to_save": ["pooler"]},
        {"fan_in_fan_out": True},
        {"lora_bias": True},
        {"bias": "all"},
    ],
)
def test_other_variants_unsupported(make_adapter, tiny_base_info, change) -> None:
    path = make_adapter("variant", r=2, target_modules=["query"])
    edit_config(path, **change)
    with pytest.raises(errors.AdapterUnsupported):
        _read(path, tiny_base_info)


def test_activated_lora_unsupported(make_adapter, tiny_base_info) -> None:
    path = make_adapter("alora", r=2, target_modules=["query"])
    edit_config(path, alora_invocation_tokens=[5, 6])
    with pytest.raises(errors.AdapterUnsupported):
        _read(path, tiny_base_info)


def test_refusals_are_permanent_422() -> None:
    classes = [
        errors.AdapterNotLora,
        errors.AdapterUnsafeFormat,
        errors.AdapterTensorsMismatch,
        errors.AdapterShapeMismatch,
        errors.AdapterRankTooHigh,
        errors.AdapterTargetMissing,
        errors.AdapterBaseMismatch,
        errors.AdapterNonFinite,
        errors.AdapterTooLarge,
        errors.AdapterUnsupported,
        errors.AdapterConfigInvalid,
        errors.AdapterScaleTooLarge,
        errors.AdapterOutsideDir,
    ]
    codes = {cls.code for cls in classes}
    assert len(codes) == len(classes)
    for cls in classes:
        assert issubclass(cls, errors.AdapterInvalid)
        assert issubclass(cls, errors.Permanent)
        assert cls.http_status == 422
        assert cls.code.startswith("ADAPTER_")


# -- accepted variants -----------------------------------------------------------------------


def test_rank_and_alpha_patterns(make_adapter, tiny_base_info) -> None:
    path = make_adapter(
        "patterns",
        r=4,
        lora_alpha=8,
        target_modules=["query", "value", "intermediate.dense"],
        rank_pattern={"value": 2, "layer.1.intermediate.dense": 6},
        alpha_pattern={"query": 3, "intermediate.dense": 12},
    )
    weights = _read(path, tiny_base_info)
    saved = _saved(path)
    expected = {  # module -> (rank, alpha)
        f"{L0}attention.self.query": (4, 3),
        f"{L0}attention.self.value": (2, 8),
        f"{L0}intermediate.dense": (4, 12),
        "encoder.layer.1.attention.self.query": (4, 3),
        "encoder.layer.1.attention.self.value": (2, 8),
        "encoder.layer.1.intermediate.dense": (6, 12),
    }
    assert set(weights.modules) == set(expected)
    for name, (rank, alpha) in expected.items():
        w = weights.modules[name]
        assert w.a.shape[0] == rank, name
        b = saved[f"{PREFIX}{name}.lora_B.weight"]
        torch.testing.assert_close(w.b, b * (alpha / rank), rtol=1e-6, atol=0)
    assert weights.rank == 6


def test_rslora_scale(make_adapter, tiny_base_info) -> None:
    r, alpha = 4, 6
    path = make_adapter("rs", r=r, lora_alpha=alpha, target_modules=["key"], use_rslora=True)
    weights = _read(path, tiny_base_info)
    saved = _saved(path)
    for name, w in weights.modules.items():
        b = saved[f"{PREFIX}{name}.lora_B.weight"]
        torch.testing.assert_close(w.b, b * (alpha / math.sqrt(r)), rtol=1e-6, atol=0)
        assert not torch.allclose(w.b, b * (alpha / r))


def test_pooler_lora_ignored(make_adapter, tiny_base_info) -> None:
    path = make_adapter("pooler", r=2, target_modules=["query", "dense"])
    assert any(k.startswith(PREFIX + "pooler.dense.") for k in _saved(path))
    weights = _read(path, tiny_base_info)
    assert not any("pooler" in name for name in weights.modules)
    assert set(weights.modules) == {
        f"encoder.layer.{i}.{m}"
        for i in range(2)
        for m in (
            *("attention.self.query", "attention.output.dense"),
            *("intermediate.dense", "output.dense"),
        )
    }


def test_explicit_pooler_target_ignored(make_adapter, tiny_base_info) -> None:
    path = make_adapter("pooler2", r=2, target_modules=["query", "pooler.dense"])
    weights = _read(path, tiny_base_info)
    assert set(weights.modules) == {f"encoder.layer.{i}.attention.self.query" for i in range(2)}


def test_content_hash_stable_and_sensitive(make_adapter, tiny_base_info, tmp_path) -> None:
    path = make_adapter("hash", r=2, target_modules=["query"])
    first = _read(path, tiny_base_info).content_hash
    assert first == _read(path, tiny_base_info).content_hash
    assert len(first) == 16 and int(first, 16) >= 0

    copy = tmp_path / "copy"
    shutil.copytree(path, copy)
    assert read_adapter("other/id", copy, tiny_base_info, RULES).content_hash == first

    tensors = _saved(copy)
    key = next(k for k in tensors if "lora_A" in k)
    tensors[key][0, 0] += 1.0
    _resave(copy, tensors)
    changed = _read(copy, tiny_base_info).content_hash
    assert changed != first

    other_seed = make_adapter("hash2", seed=99, r=2, target_modules=["query"])
    assert _read(other_seed, tiny_base_info).content_hash != first

    edit_config(path, lora_alpha=32)
    assert _read(path, tiny_base_info).content_hash != first


# -- the scale lora_alpha / r ------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [float("nan"), float("inf"), float("-inf"), 1e45])
def test_non_finite_scale_refused(make_adapter, tiny_base_info, alpha: float) -> None:
    path = make_adapter("alpha", r=2, target_modules=["query"])
    edit_config(path, lora_alpha=alpha)  # json writes NaN / Infinity, which PEFT reads back
    with pytest.raises(errors.AdapterNonFinite, match="scale"):
        _read(path, tiny_base_info)


def test_non_finite_alpha_pattern_refused(make_adapter, tiny_base_info) -> None:
    path = make_adapter("alphapattern", r=2, target_modules=["query", "value"])
    edit_config(path, alpha_pattern={"value": float("nan")})
    with pytest.raises(errors.AdapterNonFinite, match="value"):
        _read(path, tiny_base_info)


def test_absurd_scale_refused(make_adapter, tiny_base_info) -> None:
    path = make_adapter("absurd", r=2, target_modules=["query"])
    edit_config(path, lora_alpha=2 * MAX_SCALE)
    assert len(_read(path, tiny_base_info).modules) == 2  # the largest scale served
    edit_config(path, lora_alpha=2e6)
    with pytest.raises(errors.AdapterScaleTooLarge) as info:
        _read(path, tiny_base_info)
    assert info.value.code == "ADAPTER_SCALE_TOO_LARGE"


def test_weights_overflowing_once_scaled_refused(make_adapter, tiny_base_info) -> None:
    path = make_adapter("overflow", r=2, lora_alpha=8, target_modules=["query"])
    tensors = _saved(path)
    tensors[f"{PREFIX}{L0}attention.self.query.lora_B.weight"][0, 0] = 3e38  # finite, x4 is not
    _resave(path, tensors)
    with pytest.raises(errors.AdapterNonFinite, match="once scaled"):
        _read(path, tiny_base_info)
