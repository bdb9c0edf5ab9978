"""The packed multi-LoRA encoder (worker/engine/) against transformers and PEFT.

Tiny random BERT and XLM-R; base parity with `last_hidden_state` (padded batch, masked mean),
then a mixed batch of three PEFT adapters plus base rows against `PeftModel` per adapter, with
both LoRA backends.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from common.adapter_check import AdapterRules
from common.settings import BaseMismatchPolicy
from tests.unit.support import PEFT_WARNINGS, base_info_for, build_tiny
from worker.adapter_files import read_adapter
from worker.engine.encoder import PackedEncoder
from worker.engine.engine import Engine
from worker.engine.lora import (
    AdapterWeights,
    LoraBatch,
    LoraGroup,
    LoraModuleWeights,
    LoraPool,
    Segment,
)
from worker.engine.packing import pack
from worker.engine.pooling import PoolingMode, SentenceConfig, pool
from worker.engine.types import Row

pytestmark = [
    pytest.mark.unit,
    PEFT_WARNINGS,
    pytest.mark.timeout(120),
    pytest.mark.usefixtures("single_torch_thread"),
]

CPU = torch.device("cpu")
RULES = AdapterRules(max_rank=8, max_file_bytes=10**8, base_mismatch=BaseMismatchPolicy.REFUSE)
BASE_TOL = 1e-5
LORA_TOL = 1e-4
KINDS = ["bert", "xlmr"]


def random_rows(lengths: list[int], seed: int = 0) -> list[list[int]]:
    """Token ids in [2, 100): never a pad id (0 for BERT, 1 for XLM-R)."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(2, 100, (n,), generator=gen).tolist() for n in lengths]


@torch.inference_mode()
def hf_states(model: Any, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """`last_hidden_state` of a right-padded batch and its attention mask."""
    pad = model.config.pad_token_id
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return model(input_ids=ids, attention_mask=mask).last_hidden_state, mask


def hf_mean(model: Any, rows: list[list[int]]) -> torch.Tensor:
    hidden, mask = hf_states(model, rows)
    m = mask[:, :, None].to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1)


@torch.inference_mode()
def packed_pool(
    encoder: PackedEncoder,
    rows: list[list[int]],
    mode: PoolingMode = PoolingMode.MEAN,
    lora: LoraBatch | None = None,
) -> torch.Tensor:
    batch = pack(rows, encoder.position_offset, CPU)
    return pool(encoder(batch, lora), batch, mode)


def max_diff(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    return float((torch.as_tensor(a) - torch.as_tensor(b)).abs().max())


LENGTHS = [5, 17, 1, 9, 30, 12, 3, 2]


@pytest.mark.parametrize("kind", KINDS)
def test_base_parity_mean(make_base, kind: str) -> None:
    model = make_base(kind)
    encoder = PackedEncoder(model).eval()
    expected_offset = 0 if kind == "bert" else model.config.pad_token_id + 1
    assert encoder.position_offset == expected_offset
    rows = random_rows(LENGTHS)
    got = packed_pool(encoder, rows)
    want = hf_mean(model, rows)
    assert got.shape == (len(rows), 32)
    assert max_diff(got, want) <= BASE_TOL


@pytest.mark.parametrize("kind", KINDS)
def test_base_parity_unpadded_batch(make_base, kind: str) -> None:
    """All rows of one length: no key mask at all."""
    model = make_base(kind)
    encoder = PackedEncoder(model).eval()
    rows = random_rows([7, 7, 7], seed=3)
    batch = pack(rows, encoder.position_offset, CPU)
    assert len(batch.buckets) == 1
    assert batch.buckets[0].key_mask is None
    assert batch.buckets[0].grid_index is None
    assert max_diff(packed_pool(encoder, rows), hf_mean(model, rows)) <= BASE_TOL


@pytest.mark.parametrize("kind", KINDS)
def test_base_parity_length_buckets(make_base, kind: str) -> None:
    """Many rows of very different lengths: attention runs per length bucket."""
    model = make_base(kind)
    encoder = PackedEncoder(model).eval()
    lengths = [2, 60, 3, 31, 5, 45, 8, 13, 21, 34, 55, 4, 6, 9, 12, 17, 25, 40, 50, 1, 2, 3, 7, 11]
    rows = random_rows(lengths, seed=5)
    batch = pack(rows, encoder.position_offset, CPU)
    assert len(batch.buckets) > 1
    assert sorted(torch.cat([b.tokens for b in batch.buckets]).tolist()) == list(
        range(sum(lengths))
    )
    assert max_diff(packed_pool(encoder, rows), hf_mean(model, rows)) <= BASE_TOL


@pytest.mark.parametrize("kind", KINDS)
def test_base_parity_longest_rows(make_base, kind: str) -> None:
    """Rows as long as the position table allows (XLM-R: minus its pad offset)."""
    model = make_base(kind)
    encoder = PackedEncoder(model).eval()
    longest = 64 - encoder.position_offset
    rows = random_rows([longest, 1, longest - 1], seed=4)
    assert max_diff(packed_pool(encoder, rows), hf_mean(model, rows)) <= BASE_TOL


@pytest.mark.parametrize("kind", KINDS)
def test_cls_and_max_pooling(make_base, kind: str) -> None:
    model = make_base(kind)
    encoder = PackedEncoder(model).eval()
    rows = random_rows(LENGTHS, seed=5)
    hidden, mask = hf_states(model, rows)
    cls = packed_pool(encoder, rows, PoolingMode.CLS)
    assert max_diff(cls, hidden[:, 0]) <= BASE_TOL
    masked = hidden.masked_fill(mask[:, :, None] == 0, float("-inf"))
    assert max_diff(packed_pool(encoder, rows, PoolingMode.MAX), masked.max(1).values) <= BASE_TOL


def test_unsupported_models_refused() -> None:
    from transformers import BertConfig, BertModel, DistilBertConfig, DistilBertModel

    torch.manual_seed(0)
    distil = DistilBertModel(
        DistilBertConfig(vocab_size=100, dim=32, n_layers=1, n_heads=2, hidden_dim=64)
    )
    with pytest.raises(ValueError, match="model_type"):
        PackedEncoder(distil)
    relative = BertModel(
        BertConfig(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            vocab_size=100,
            position_embedding_type="relative_key",
        )
    )
    with pytest.raises(ValueError, match="absolute"):
        PackedEncoder(relative)


# -- adapters --------------------------------------------------------------------------------

#: name -> (slot, LoraConfig kwargs). Different ranks, alphas, targets, rsLoRA and patterns.
ADAPTERS: dict[str, tuple[int, dict[str, Any]]] = {
    "org/qv": (2, {"r": 2, "lora_alpha": 4, "target_modules": ["query", "value"]}),
    "org/rs": (
        0,
        {"r": 4, "lora_alpha": 8, "target_modules": ["key", "dense"], "use_rslora": True},
    ),
    "org/all": (
        3,
        {
            "r": 8,
            "lora_alpha": 16,
            "target_modules": ["query", "key", "value", "intermediate.dense", "output.dense"],
            "rank_pattern": {"value": 3},
            "alpha_pattern": {"intermediate.dense": 5},
        },
    ),
}
#: (length, adapter or None), interleaved so that sorting by slot really reorders rows.
MIXED = [
    (6, "org/qv"),
    (11, None),
    (3, "org/all"),
    (9, "org/rs"),
    (1, "org/qv"),
    (14, "org/all"),
    (5, None),
    (13, "org/rs"),
    (7, "org/qv"),
    (2, "org/rs"),
    (10, "org/all"),
    (4, None),
]


def make_setup(make_base, make_adapter, kind: str) -> dict[str, Any]:
    base = make_base(kind)
    encoder = PackedEncoder(base).eval()
    lora_pool = LoraPool(encoder.lora_groups(), 4, RULES.max_rank, CPU, torch.float32)
    info = base_info_for(base)
    dirs: dict[str, Path] = {}
    for i, (lora_id, (slot, config)) in enumerate(ADAPTERS.items()):
        dirs[lora_id] = make_adapter(f"{kind}-{i}", kind=kind, seed=10 + i, **config)
        weights = read_adapter(lora_id, dirs[lora_id], info, RULES)
        lora_pool.write(slot, weights)
    rows = random_rows([n for n, _ in MIXED], seed=7)
    return {
        "base": base, "encoder": encoder, "pool": lora_pool, "info": info, "dirs": dirs,
        "rows": rows,
    }  # fmt: skip


def reference(make_base, kind: str, setup: dict[str, Any]) -> torch.Tensor:
    """Each row through transformers (base rows) or PeftModel (adapter rows)."""
    from peft import PeftModel

    rows = setup["rows"]
    out = torch.empty(len(rows), 32)
    for lora_id in [None, *ADAPTERS]:
        idx = [i for i, (_, a) in enumerate(MIXED) if a == lora_id]
        model = make_base(kind)
        if lora_id is not None:
            model = PeftModel.from_pretrained(model, setup["dirs"][lora_id]).eval()
        out[idx] = hf_mean(model, [rows[i] for i in idx])
    return out


def segments_like_engine(ordered_slots: list[int | None], lengths: list[int]) -> list[Segment]:
    """What `Engine._lora_batch` builds: one contiguous token segment per slot."""
    segments: list[Segment] = []
    at = 0
    for slot, n in zip(ordered_slots, lengths, strict=True):
        end = at + n
        if slot is not None:
            if segments and segments[-1].slot == slot:
                segments[-1] = Segment(slot, segments[-1].start, end)
            else:
                segments.append(Segment(slot, at, end))
        at = end
    return segments


@pytest.fixture(scope="module", params=KINDS)
def adapters_case(request, tmp_path_factory) -> dict[str, Any]:
    """Built once per model kind (PEFT models are the slow part of this module)."""
    kind = request.param
    root = tmp_path_factory.mktemp(f"adapters-{kind}")

    def make_base(k: str = "bert", seed: int = 0, **overrides: Any) -> Any:
        return build_tiny(k, seed, overrides)

    def make_adapter(name: str, kind: str, seed: int, **lora: Any) -> Path:
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(seed)
        model = get_peft_model(make_base(kind), LoraConfig(init_lora_weights=False, **lora))
        model.save_pretrained(root / name)
        return root / name

    setup = make_setup(make_base, make_adapter, kind)
    setup["kind"] = kind
    setup["make_base"] = make_base
    setup["want"] = reference(make_base, kind, setup)
    setup["base_only"] = hf_mean(make_base(kind), setup["rows"])
    return setup


def test_adapters_change_the_output(adapters_case) -> None:
    """Guard against a vacuous parity: every adapter row differs from its base embedding."""
    want, base_only = adapters_case["want"], adapters_case["base_only"]
    for i, (_, lora_id) in enumerate(MIXED):
        diff = max_diff(want[i], base_only[i])
        if lora_id is None:
            assert diff <= BASE_TOL
        else:
            assert diff > 1e-3, (lora_id, diff)


@pytest.mark.parametrize(("backend", "chunk"), [("segment", 128), ("bmm", 4), ("bmm", 5)])
def test_mixed_batch_matches_peft(adapters_case, backend: str, chunk: int) -> None:
    setup = adapters_case
    rows, encoder = setup["rows"], setup["encoder"]
    slots = [None if a is None else ADAPTERS[a][0] for _, a in MIXED]
    order = sorted(range(len(rows)), key=lambda i: -1 if slots[i] is None else slots[i])
    ordered = [rows[i] for i in order]
    segments = segments_like_engine([slots[i] for i in order], [len(r) for r in ordered])
    assert [s.slot for s in segments] == [0, 2, 3]  # contiguous, one per adapter
    assert segments[0].start == sum(n for n, a in MIXED if a is None)  # base rows come first
    lora = LoraBatch(setup["pool"], segments, backend, chunk=chunk)
    got_ordered = packed_pool(encoder, ordered, lora=lora)
    got = torch.empty_like(got_ordered)
    got[order] = got_ordered
    assert max_diff(got, setup["want"]) <= LORA_TOL


def bare_engine(setup: dict[str, Any], backend: str) -> Engine:
    """An `Engine` around the test's own encoder and pool (no model directory to load)."""
    sentence = SentenceConfig(PoolingMode.MEAN, normalize=False)
    return Engine(setup["encoder"], setup["pool"], setup["info"], sentence, backend)


@pytest.mark.parametrize("backend", ["segment", "bmm"])
def test_engine_encode_mixed_rows(adapters_case, backend: str) -> None:
    """`Engine.encode`: its own slot ordering, segments, pooling, normalizing and un-ordering."""
    setup = adapters_case
    engine = bare_engine(setup, backend)
    normalize = [i % 3 == 0 for i in range(len(MIXED))]
    rows = [
        Row(tokens, None if a is None else ADAPTERS[a][0], norm)
        for tokens, (_, a), norm in zip(setup["rows"], MIXED, normalize, strict=True)
    ]
    got = engine.encode(rows)
    assert got.dtype == np.float32 and got.shape == (len(rows), 32)
    want = setup["want"].clone()
    flags = torch.tensor(normalize)
    want[flags] = torch.nn.functional.normalize(want[flags], dim=1)
    assert max_diff(got, want) <= LORA_TOL
    assert np.allclose(np.linalg.norm(got[normalize], axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("backend", ["segment", "bmm"])
def test_a_forward_run_in_another_forwards_pause_changes_neither(adapters_case, backend) -> None:
    """The batcher runs interactive rows in a bulk forward's pauses: the engine must be
    re-entrant there. Every pause (one per step of each layer) gets a nested forward of other
    rows; both give what they give alone."""
    setup = adapters_case
    engine = bare_engine(setup, backend)
    rows = [
        Row(tokens, None if a is None else ADAPTERS[a][0], False)
        for tokens, (_, a) in zip(setup["rows"], MIXED, strict=True)
    ]
    outer, inner = rows[::2], rows[1::2]
    nested: list[np.ndarray] = []
    got = engine.encode(outer, lambda: nested.append(engine.encode(inner)))
    assert len(nested) == 5 * len(setup["encoder"].layers)
    np.testing.assert_array_equal(got, engine.encode(outer))
    for vectors in nested:
        np.testing.assert_array_equal(vectors, nested[0])
    assert max_diff(nested[0], setup["want"][1::2]) <= LORA_TOL
    assert max_diff(got, setup["want"][::2]) <= LORA_TOL


def test_engine_encode_base_only_runs_no_lora(adapters_case) -> None:
    setup = adapters_case
    engine = bare_engine(setup, "segment")
    base_rows = [Row(t, None, False) for t, (_, a) in zip(setup["rows"], MIXED, strict=True)]
    assert engine._lora_batch(base_rows) is None
    got = engine.encode(base_rows)
    assert max_diff(got, setup["base_only"]) <= BASE_TOL


def test_single_adapter_batch_matches_peft(adapters_case) -> None:
    setup = adapters_case
    engine = bare_engine(setup, "bmm")
    idx = [i for i, (_, a) in enumerate(MIXED) if a == "org/all"]
    rows = [Row(setup["rows"][i], ADAPTERS["org/all"][0], False) for i in idx]
    assert max_diff(engine.encode(rows), setup["want"][idx]) <= LORA_TOL


# -- LoraBatch on its own --------------------------------------------------------------------


def test_lora_backends_agree_with_explicit_math() -> None:
    gen = torch.Generator().manual_seed(11)
    groups = [LoraGroup(("g.a", "g.b"), 6, (5, 3))]
    lora_pool = LoraPool(groups, 3, 4, CPU, torch.float32)
    ranks = {0: {"g.a": 4}, 1: {"g.a": 1, "g.b": 3}, 2: {"g.b": 2}}
    adapters: dict[int, AdapterWeights] = {}
    for slot, mods in ranks.items():
        modules = {
            name: LoraModuleWeights(
                a=torch.randn(r, 6, generator=gen),
                b=torch.randn(5 if name == "g.a" else 3, r, generator=gen),
            )
            for name, r in mods.items()
        }
        adapters[slot] = AdapterWeights(f"s{slot}", "h", modules)
        lora_pool.write(slot, adapters[slot])

    x = torch.randn(23, 6, generator=gen)
    y0 = torch.randn(23, 8, generator=gen)
    segments = [Segment(1, 2, 9), Segment(0, 9, 10), Segment(2, 12, 23)]  # tokens 0-1, 10-11: base
    want = y0.clone()
    for seg in segments:
        for name, w in adapters[seg.slot].modules.items():
            cols = slice(0, 5) if name == "g.a" else slice(5, 8)
            want[seg.start : seg.end, cols] += x[seg.start : seg.end] @ w.a.T @ w.b.T
    for backend, chunk in [("segment", 128), ("bmm", 1), ("bmm", 3), ("bmm", 7), ("bmm", 128)]:
        y = y0.clone()
        LoraBatch(lora_pool, segments, backend, chunk=chunk).add(0, x, y)
        assert max_diff(y, want) <= 1e-5, (backend, chunk)
        assert torch.equal(y[:2], y0[:2]) and torch.equal(y[10:12], y0[10:12])


def test_pool_write_replaces_previous_adapter() -> None:
    groups = [LoraGroup(("g.a",), 2, (2,))]
    lora_pool = LoraPool(groups, 1, 4, CPU, torch.float32)
    big = AdapterWeights("big", "h", {"g.a": LoraModuleWeights(torch.ones(4, 2), torch.ones(2, 4))})
    small = AdapterWeights(
        "small", "h", {"g.a": LoraModuleWeights(torch.ones(1, 2), 2 * torch.ones(2, 1))}
    )
    lora_pool.write(0, big)
    lora_pool.write(0, small)
    assert lora_pool.layouts[0].rows == [1]
    x, y = torch.ones(3, 2), torch.zeros(3, 2)
    LoraBatch(lora_pool, [Segment(0, 0, 3)], "bmm", chunk=2).add(0, x, y)
    assert torch.equal(y, torch.full((3, 2), 4.0))  # only the small adapter: (1+1) * 2


def test_unknown_backend_refused() -> None:
    lora_pool = LoraPool([LoraGroup(("g.a",), 2, (2,))], 1, 1, CPU, torch.float32)
    with pytest.raises(ValueError, match="backend"):
        LoraBatch(lora_pool, [], "triton")


EIGHT = [
    {"r": 2, "lora_alpha": 4, "target_modules": ["query", "value"]},
    {"r": 4, "lora_alpha": 4, "target_modules": ["query", "key", "value"], "use_rslora": True},
    {"r": 8, "lora_alpha": 32, "target_modules": ["dense"]},
    {"r": 1, "lora_alpha": 2, "target_modules": ["key"]},
    {"r": 6, "lora_alpha": 3, "target_modules": ["value", "output.dense"]},
    {"r": 3, "lora_alpha": 9, "target_modules": ["query", "intermediate.dense"]},
    {"r": 7, "lora_alpha": 16, "target_modules": ["query", "key", "value", "dense"]},
    {"r": 5, "lora_alpha": 10, "target_modules": ["attention.output.dense", "value"]},
]


@pytest.mark.parametrize("backend", ["segment", "bmm"])
def test_eight_adapters_and_base_rows_equal_rows_alone(
    make_base, make_adapter, backend: str
) -> None:
    """One batch mixing 8 adapters and base rows gives every row what it gets alone."""
    base = make_base("bert")
    encoder = PackedEncoder(base).eval()
    lora_pool = LoraPool(encoder.lora_groups(), 8, RULES.max_rank, CPU, torch.float32)
    info = base_info_for(base)
    for slot, config in enumerate(EIGHT):
        path = make_adapter(f"eight-{slot}", seed=40 + slot, **config)
        lora_pool.write(slot, read_adapter(f"org/e{slot}", path, info, RULES))
    engine = bare_engine({"encoder": encoder, "pool": lora_pool, "info": info}, backend)
    lengths = [3 + (7 * i) % 13 for i in range(27)]
    slots: list[int | None] = [None if i % 3 == 0 else i % 8 for i in range(27)]
    rows = [
        Row(t, s, i % 2 == 0)
        for i, (t, s) in enumerate(zip(random_rows(lengths, seed=9), slots, strict=True))
    ]
    mixed = engine.encode(rows)
    alone = np.concatenate([engine.encode([row]) for row in rows])
    assert np.abs(mixed - alone).max() <= 1e-5
    base_alone = np.concatenate([engine.encode([Row(r.tokens, None, r.normalize)]) for r in rows])
    changed = [i for i, s in enumerate(slots) if s is not None]
    assert np.abs(mixed[changed] - base_alone[changed]).max(axis=1).min() > 1e-4, "adapters apply"
