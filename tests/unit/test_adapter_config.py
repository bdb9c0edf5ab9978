"""adapter_config.json (common/adapter_config.py): malformed configs refused with a plain 422, and
rank_pattern / alpha_pattern keys matched as PEFT matches them, with no regex engine.

PEFT resolves a key with `re.match(rf"(.*\\.)?({key})$", name)`; these tests hold our matcher to
exactly that on the keys PEFT writes, and check that keys outside the subset are refused before
anything evaluates them.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from common import errors
from common.adapter_check import AdapterRules
from common.adapter_config import (
    MAX_CONFIG_BYTES,
    MAX_PATTERN_KEYS,
    compile_patterns,
    parse_key,
)
from common.adapters import CONFIG_FILE, WEIGHTS_FILE
from common.settings import BaseMismatchPolicy
from tests.unit.support import PEFT_WARNINGS, edit_config
from worker.adapter_files import read_adapter
from worker.engine.types import BaseModelInfo

pytestmark = [pytest.mark.unit, PEFT_WARNINGS, pytest.mark.usefixtures("single_torch_thread")]

#: PEFT's module names for a 2-layer BERT, plus names with `_` and `-` where a wildcard `.` of a
#: key could stand for another character.
NAMES = [
    *(
        f"encoder.layer.{i}.{m}"
        for i in (0, 1, 10)
        for m in (
            "attention.self.query",
            "attention.self.value",
            "attention.output.dense",
            "intermediate.dense",
            "output.dense",
        )
    ),
    "pooler.dense",
    "query",
    "self_query",
    "attention.self-query",
    "model.layers.0.mlp.gate_up_proj",
]

#: Keys as users write them, as EVA and LoRA conversion write them (full module names), and as
#: PEFT's weight conversion writes them (rf".*\.{re.escape(name)}").
PEFT_KEYS = [
    "query",
    "value",
    "dense",
    "output.dense",
    "attention.output.dense",
    "layer.1.intermediate.dense",
    "0.attention.self.query",
    "1.output.dense",
    "self.query",
    "encoder.layer.0.attention.self.query",
    "encoder.layer.10.output.dense",
    "mlp.gate_up_proj",
    *(".*\\." + re.escape(n) for n in ("query", "self.query", "output.dense", "gate_up_proj")),
    ".*\\." + re.escape("encoder.layer.1.attention.self.value"),
    re.escape("attention.self-query"),
]


def peft_match(key: str, name: str) -> bool:
    """`peft.utils.other.get_pattern_key`'s test, spelled out (the same regex)."""
    return re.match(rf"(.*\.)?({key})$", name) is not None


@pytest.mark.parametrize("key", PEFT_KEYS)
def test_keys_peft_writes_match_as_in_peft(key: str) -> None:
    parsed = parse_key(key)
    assert parsed is not None
    for name in NAMES:
        assert parsed.matches(name) == peft_match(key, name), (key, name)


def test_first_matching_key_wins_as_in_peft() -> None:
    from peft.utils.other import get_pattern_key

    patterns = {"layer.1.intermediate.dense": 6, "dense": 3, "query": 5, ".*\\.value": 7}
    compiled = compile_patterns("org/x", "rank_pattern", patterns)
    for name in NAMES:
        expected = patterns.get(get_pattern_key(patterns.keys(), name), 2)
        assert compiled.value(name, 2) == expected, name


def test_random_keys_of_the_subset_match_as_in_peft() -> None:
    """Wildcard and escaped dots, `_`, `-`, digits, with and without the `.*\\.` prefix."""
    rng = random.Random(7)
    names = NAMES + [
        "".join(rng.choice("ab1._-") for _ in range(rng.randint(1, 9))) for _ in range(300)
    ]
    for _ in range(3000):
        body = "".join(
            rng.choice(["a", "b", "1", ".", "_", "-", "\\.", "\\-"])
            for _ in range(rng.randint(1, 6))
        )
        key = (".*\\." if rng.random() < 0.3 else "") + body
        parsed = parse_key(key)
        assert parsed is not None, key
        for name in rng.sample(names, 10):
            assert parsed.matches(name) == peft_match(key, name), (key, name)


@pytest.mark.parametrize(
    "key",
    [
        "(.*.*)*!",  # catastrophic backtracking: froze the worker when put into `re`
        "(query|value)",
        "layer\\.[0-5]\\.attention",
        "layer.\\d+.query",
        "query$",
        "^query",
        "que?ry",
        "(",
        "[",
        "\\",
        ".*",
        "",
        "query value",
        "quéry",
    ],
)
def test_keys_beyond_the_subset_are_refused(key: str) -> None:
    assert parse_key(key) is None
    with pytest.raises(errors.AdapterUnsupported, match="rank_pattern key") as info:
        compile_patterns("org/x", "rank_pattern", {"query": 2, key: 4})
    assert info.value.code == "ADAPTER_UNSUPPORTED"


def test_too_many_pattern_keys_are_refused() -> None:
    keys = {f"layer.{i}.query": 2 for i in range(MAX_PATTERN_KEYS)}
    assert len(compile_patterns("org/x", "alpha_pattern", keys).entries) == MAX_PATTERN_KEYS
    keys["one.more"] = 2
    with pytest.raises(errors.AdapterConfigInvalid, match="alpha_pattern"):
        compile_patterns("org/x", "alpha_pattern", keys)


# -- through read_adapter, on real PEFT adapters of a tiny random BERT ------------------------

RULES = AdapterRules(16, 10_000_000, BaseMismatchPolicy.REFUSE)
PREFIX = "base_model.model."
L0 = "encoder.layer.0."


def _read(adapter_dir: Path, base: BaseModelInfo, rules: AdapterRules = RULES) -> Any:
    return read_adapter("org/test", adapter_dir, base, rules)


# -- malformed configs: each a 422 ADAPTER_* with a plain message, never a Python error -------

VALID = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["query"]}


def _config(**changes: Any) -> str:
    return json.dumps({k: v for k, v in {**VALID, **changes}.items() if v is not ...})


MALFORMED = [
    ("a list", "[1, 2]"),
    ("a string", '"LORA"'),
    ("null", "null"),
    ("nested too deep", "[" * 100_000 + "]" * 100_000),
    ("nested config", _config(r={"r": 2})),
    ("lora_alpha missing", _config(lora_alpha=...)),
    ("lora_alpha a string", _config(lora_alpha="8")),
    ("r missing", _config(r=...)),
    ("r of 0", _config(r=0)),
    ("r a bool", _config(r=True)),
    ("rank_pattern a list", _config(rank_pattern=["query"])),
    ("rank_pattern rank 0", _config(rank_pattern={"query": 0})),
    ("alpha_pattern a string", _config(alpha_pattern={"query": "x"})),
    ("target_modules an int", _config(target_modules=5)),
    ("use_rslora a string", _config(use_rslora="yes")),
]


@pytest.mark.parametrize("text", [case[1] for case in MALFORMED], ids=[c[0] for c in MALFORMED])
def test_malformed_config_is_config_invalid(make_adapter, tiny_base_info, text: str) -> None:
    path = make_adapter("malformed", r=2, target_modules=["query"])
    (path / CONFIG_FILE).write_text(text)
    with pytest.raises(errors.AdapterConfigInvalid) as info:
        _read(path, tiny_base_info)
    assert info.value.code == "ADAPTER_CONFIG_INVALID"
    message = info.value.message
    assert CONFIG_FILE in message and len(message) < 300
    assert not any(word in message for word in ("Error", "NoneType", "operand", "Traceback"))


def test_config_not_utf8_is_config_invalid(make_adapter, tiny_base_info) -> None:
    path = make_adapter("latin", r=2, target_modules=["query"])
    (path / CONFIG_FILE).write_bytes(b'{"peft_type": "\xff"}')
    with pytest.raises(errors.AdapterConfigInvalid, match="not JSON"):
        _read(path, tiny_base_info)


def test_config_bounded_before_parsing(make_adapter, tiny_base_info) -> None:
    path = make_adapter("hugeconfig", r=2, target_modules=["query"])
    edit_config(path, notes="x" * MAX_CONFIG_BYTES)
    generous = AdapterRules(16, 10 * MAX_CONFIG_BYTES, BaseMismatchPolicy.REFUSE)
    with pytest.raises(errors.AdapterTooLarge, match=CONFIG_FILE):
        _read(path, tiny_base_info, generous)


# -- rank_pattern / alpha_pattern keys ---------------------------------------------------------


@pytest.mark.parametrize("key", ["(.*.*)*!", "(", "(query|value)"])
def test_regex_pattern_key_refused_unevaluated(make_adapter, tiny_base_info, key: str) -> None:
    """The first key would backtrack for hours in `re` (holding the GIL); `(` is not even a
    valid regex. Both are refused before anything evaluates them."""
    path = make_adapter("redos", r=2, target_modules=["query"])
    edit_config(path, rank_pattern={key: 4})
    with pytest.raises(errors.AdapterUnsupported, match="regular expression") as info:
        _read(path, tiny_base_info)
    assert info.value.code == "ADAPTER_UNSUPPORTED"


def test_pattern_keys_in_peft_escaped_form(make_adapter, tiny_base_info) -> None:
    """PEFT applied these keys when it built the adapter; the saved shapes are its answer."""
    path = make_adapter(
        "escaped",
        r=2,
        lora_alpha=4,
        target_modules=["query", "value", "dense"],
        rank_pattern={".*\\.value": 6, "encoder\\.layer\\.1\\.output\\.dense": 3},
        alpha_pattern={".*\\.self\\.query": 5, "layer.0.output.dense": 9},
    )
    weights = _read(path, tiny_base_info)
    saved = load_file(path / WEIGHTS_FILE)
    for name, w in weights.modules.items():
        b = saved[f"{PREFIX}{name}.lora_B.weight"]
        rank, alpha = b.shape[1], 4.0
        if name.endswith("self.query"):
            alpha = 5.0
        elif name == L0 + "output.dense":
            alpha = 9.0
        assert w.a.shape[0] == rank
        torch.testing.assert_close(w.b, b * (alpha / rank), rtol=1e-6, atol=0)
    assert weights.modules[L0 + "attention.self.value"].a.shape[0] == 6
    assert weights.modules["encoder.layer.1.output.dense"].a.shape[0] == 3
