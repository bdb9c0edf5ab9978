"""The control-plane benchmark's processes: what they cost in CPU, and how they are set up.

CPU time is read from `/proc/<pid>/stat` (utime + stime: every thread of the process), plus, for
the servers, the CPU of their live descendant processes and of children they have reaped
(cutime + cstime), so a worker that forks is counted whole. The load generator is this process,
whose own children are the servers: for it, only its own utime + stime count.
"""

from __future__ import annotations

import json
import os
import random
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

from common.settings import DEFAULT_MODEL_ID
from loraq.stack import LOCAL_DEV_ENV, Process, Stack, spawn

BENCH = Path(__file__).resolve().parent
TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")
LOADGEN = "loadgen"


def _stat(pid: int) -> tuple[int, float, float]:
    """(parent pid, own CPU seconds, reaped children's CPU seconds)."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2 :].split()  # the name may hold spaces and parentheses
    utime, stime, cutime, cstime = (int(f) for f in fields[11:15])
    return int(fields[1]), (utime + stime) * TICK_S, (cutime + cstime) * TICK_S


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                tree.setdefault(_stat(int(entry))[0], []).append(int(entry))
            except (OSError, ValueError):
                continue  # exited while we looked
    return tree


def process_cpu_s(pid: int, tree: Mapping[int, list[int]] | None) -> float:
    """CPU seconds of `pid`; with `tree` (parent → children) also its whole family's."""
    _, own, reaped = _stat(pid)
    if tree is None:
        return own
    total = own + reaped
    stack = list(tree.get(pid, ()))
    while stack:
        child = stack.pop()
        try:
            _, child_own, child_reaped = _stat(child)
        except OSError:
            continue
        total += child_own + child_reaped
        stack.extend(tree.get(child, ()))
    return total


def cpu_snapshot(pids: Mapping[str, int]) -> dict[str, float]:
    """CPU seconds so far per named process; `LOADGEN` is this process, counted alone."""
    tree = _children()
    return {
        name: process_cpu_s(pid, None if name == LOADGEN else tree) for name, pid in pids.items()
    }


def cpu_ms_per_job(
    before: Mapping[str, float], after: Mapping[str, float], jobs: int
) -> dict[str, float]:
    return {name: round((after[name] - before[name]) * 1000 / jobs, 3) for name in before}


# -- Inputs ----------------------------------------------------------------------------------------


def one_token_words(tokenizer: Tokenizer) -> list[str]:
    from bench.e2e import WORDS

    return [w for w in WORDS if len(tokenizer.encode(w, add_special_tokens=False).ids) == 1]


def texts_of_tokens(n: int, low: int, high: int, tokenizer: Tokenizer, seed: int) -> list[str]:
    """Texts of `low`..`high` tokens each (special tokens included), uniformly."""
    words, rng = one_token_words(tokenizer), random.Random(seed)
    specials = len(tokenizer.encode("", add_special_tokens=True).ids)
    return [
        " ".join(rng.choice(words) for _ in range(rng.randint(low, high) - specials))
        for _ in range(n)
    ]


Payload = tuple[str | None, list[str]]  # (lora_id, texts)


def make_payloads(
    texts: list[str], job_size: int, jobs: int, lora_ids: list[str | None]
) -> list[Payload]:
    """`jobs` jobs of `job_size` texts, cycling through `texts` and round-robin over adapters."""
    out: list[Payload] = []
    at = 0
    for i in range(jobs):
        chunk = [texts[(at + k) % len(texts)] for k in range(job_size)]
        at += job_size
        out.append((lora_ids[i % len(lora_ids)], chunk))
    return out


@dataclass(frozen=True)
class Models:
    model_dir: Path
    adapter_dir: Path
    lora_ids: list[str | None]  # None: the base model


def make_models(work: Path, adapters: int) -> Models:
    """The tiny random BERT (hidden 32, 2 layers) and `adapters` random LoRA adapters for it."""
    import warnings

    from transformers.utils import logging as hf_logging

    from loraq.testing import save_random_adapter, save_tiny_model

    hf_logging.set_verbosity_error()
    model_dir, adapter_dir = work / "model", work / "adapters"
    save_tiny_model(model_dir)
    lora_ids: list[str | None] = [None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in range(adapters):
            lora_id = f"bench/a{i}"
            save_random_adapter(
                model_dir, adapter_dir / lora_id, DEFAULT_MODEL_ID, seed=i, r=8, lora_alpha=16,
                target_modules=["query", "key", "value"],
            )  # fmt: skip
            lora_ids.append(lora_id)
    return Models(model_dir, adapter_dir, lora_ids)


def stack_env(redis_url: str, models: Models, extra: Mapping[str, str]) -> dict[str, str]:
    return {
        **LOCAL_DEV_ENV,
        "LORAQ_REDIS_URL": redis_url,
        "LORAQ_MODELS": json.dumps({DEFAULT_MODEL_ID: str(models.model_dir)}),
        "LORAQ_ADAPTERS__DIR": str(models.adapter_dir),
        "LORAQ_WORKER__TORCH_THREADS": "1",
        # The drain fills the queues before any worker runs; admission must not stop it.
        "LORAQ_LIMITS__MAX_QUEUED_JOBS": "1000000",
        **extra,
    }


def start_bench_worker(stack: Stack, script: str, extra_env: Mapping[str, str]) -> Process:
    """A worker launched by a bench script (`sim_worker.py`, `celery_noop.py`), stopped with
    the stack."""
    name = f"{Path(script).stem}-{len(stack.workers)}"
    argv = [sys.executable, str(BENCH / script)]
    proc = spawn(name, argv, {**stack.env, **extra_env}, stack.log_dir)
    stack.workers.append(proc)
    return proc


def stop_worker(stack: Stack, proc: Process) -> None:
    """SIGTERM (the worker drains and leaves the registry), and forget it."""
    proc.stop()
    stack.workers.remove(proc)
