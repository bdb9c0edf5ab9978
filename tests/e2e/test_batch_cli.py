"""Bulk embedding as a user of the client runs it against the real stack: `loraq batch lines |
loraq batch submit --wait`, then `download`, and the SDK's readers for each output format; the
vectors must equal what `/v1/embeddings` answers for the same texts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from loraq.stack import Stack
from loraq_client import (
    LoraqClient,
    batch_lines,
    load_npy_output,
    load_parquet_output,
    read_batch_output,
)
from tests.constants import MODEL

LORAQ = str(Path(sys.executable).parent / "loraq")
LORA_ID = "org/qkv-r8"
TEXTS = [f"clause {i}: the tenant returns the keys on day {i}" for i in range(7)] + ["Ünïcode"]


def loraq(*argv: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """The installed command, as a shell runs it; no LORAQ_* variables leak in from here."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORAQ_")}
    return subprocess.run(
        [LORAQ, *argv], input=stdin, capture_output=True, text=True, timeout=300, env=env
    )


def reference(client: httpx.Client, texts: list[str]) -> np.ndarray:
    reply = client.post("/v1/embeddings", json={"model": MODEL, "input": texts, "lora_id": LORA_ID})
    assert reply.status_code == 200, reply.text
    return np.array([d["embedding"] for d in reply.json()["data"]], dtype=np.float32)


def close(got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype == np.float32 and got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-5


def test_lines_submit_wait_download(stack: Stack, client: httpx.Client, tmp_path: Path) -> None:
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS[:4]) + "\n\n" + "\n".join(TEXTS[4:]) + "\n", encoding="utf-8")
    lines = loraq("batch", "lines", "--model", MODEL, "--lora-id", LORA_ID, "--file", str(texts))
    assert lines.returncode == 0, lines.stderr
    # A line the batch cannot answer goes to the error file; the batch still completes.
    bad = {"custom_id": "bad", "method": "POST", "url": "/v1/embeddings", "body": {"model": "x"}}
    stdin = lines.stdout + json.dumps(bad) + "\n"

    url = ["--url", stack.url]
    argv = ["batch", "submit", *url, "--wait", "--timeout", "180", "--poll", "0.5"]
    done = loraq(*argv, "--metadata", "run=e2e", stdin=stdin)
    assert done.returncode == 0, done.stderr
    batch = json.loads(done.stdout)
    assert (batch["status"], batch["metadata"]) == ("completed", {"run": "e2e"})
    assert batch["request_counts"] == {"total": 9, "completed": 8, "failed": 1}

    status = loraq("batch", "status", batch["id"], *url)
    assert json.loads(status.stdout)["status"] == "completed"
    listed = loraq("batch", "list", *url, "--limit", "1")
    assert json.loads(listed.stdout)["id"] == batch["id"]

    fetched = loraq("batch", "download", batch["id"], *url, "--dir", str(tmp_path / "out"))
    assert fetched.returncode == 0, fetched.stderr
    output, errors = (Path(p) for p in fetched.stdout.splitlines())
    results = dict(read_batch_output(output))
    assert list(results) == [f"line-{i}" for i in range(len(TEXTS))]
    vectors = np.concatenate([v for v in results.values() if isinstance(v, np.ndarray)])
    close(vectors, reference(client, TEXTS))
    ((custom_id, error),) = read_batch_output(errors)
    assert custom_id == "bad" and not isinstance(error, np.ndarray)


@pytest.mark.parametrize("output_format", ["npy", "parquet"])
def test_columnar_outputs_through_the_sdk(
    stack: Stack, client: httpx.Client, tmp_path: Path, output_format: str
) -> None:
    data = "".join(batch_lines(TEXTS, MODEL, LORA_ID, "q", texts_per_line=3)).encode()
    with LoraqClient(stack.url) as sdk:
        batch = sdk.submit_batch(
            data, output_format=output_format, wait=True, timeout=180, poll_s=0.5
        )
        assert batch.ok, batch.data
        paths = batch.download(tmp_path)
    loaded: tuple[list[str], Any]
    if output_format == "npy":
        assert set(paths) == {"output", "ids"}
        loaded = load_npy_output(paths["output"], paths["ids"])
    else:
        assert set(paths) == {"output"}
        loaded = load_parquet_output(paths["output"])
    custom_ids, vectors = loaded
    assert custom_ids == ["q0"] * 3 + ["q1"] * 3 + ["q2"] * 2
    close(vectors, reference(client, TEXTS))
