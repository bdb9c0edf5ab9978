"""bench/batch.py's pure parts: its in-process side must run the chunks the batch runner cuts, and
its figures must be the ones it says."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from api.auth import LOCAL_TENANT, Caller
from api.batch_input import in_key, split_input
from bench.batch import (
    batch_file,
    chunk_jobs,
    latency_summary,
    make_texts,
    paired_ratio,
    proc_memory_mb,
    verdict,
)
from common.object_store import LocalObjectStore
from common.settings import DEFAULT_MODEL_ID, Settings


@pytest.mark.parametrize(("n", "chunk_items"), [(1, 4), (23, 4), (40, 5), (7, 100)])
def test_chunk_jobs_are_the_chunks_the_runner_cuts(
    tmp_path: Path, n: int, chunk_items: int
) -> None:
    lora_ids = [None, "org/a", "org/b"]
    texts = make_texts(n, seed=n)
    store = LocalObjectStore(tmp_path)
    with store.open_write("in.jsonl") as out:
        out.write(batch_file(texts, lora_ids, DEFAULT_MODEL_ID))
    settings = Settings(
        auth={"mode": "disabled"},
        adapters={"check_at_submit": False},
        bulk={"chunk_items": chunk_items},
    )
    split = split_input(store, "in.jsonl", "b1", settings, Caller(LOCAL_TENANT, None), {})
    assert (split.lines, split.invalid) == (n, 0)
    runner = []
    for k in range(split.chunks):
        with store.open_read(in_key("b1", k)) as stream:
            header = json.loads(stream.readline())
            runner.append((header["lora_id"], [t for x in stream for t in json.loads(x)["texts"]]))
    assert chunk_jobs(texts, lora_ids, chunk_items) == runner


def test_texts_are_short_and_reproducible() -> None:
    texts = make_texts(200, seed=3)
    assert texts == make_texts(200, seed=3) != make_texts(200, seed=4)
    assert all(8 <= len(t.split()) <= 24 for t in texts)


def test_figures() -> None:
    summary = latency_summary([float(x) for x in range(1, 101)])
    assert summary == {"n": 100, "p50_ms": 50.5, "p99_ms": 99.0, "max_ms": 100.0}
    ratio, pairs = paired_ratio([9.0, 8.0, 10.0], [10.0, 10.0, 10.0])
    assert pairs == [0.9, 0.8, 1.0] and ratio == 0.9
    with pytest.raises(ValueError, match="as many"):
        paired_ratio([1.0], [])
    assert verdict(0.9, 0.9, at_most=False) is True
    assert verdict(2.1, 2, at_most=True) is False
    assert verdict(None, 2, at_most=True) is None


def test_peak_memory_of_this_process() -> None:
    mem = proc_memory_mb(os.getpid())
    assert 0 < mem["rss_mb"] <= mem["peak_mb"]
