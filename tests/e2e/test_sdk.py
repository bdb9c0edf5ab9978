"""The Python client, the CLI and the real `sie-sdk` client against the real stack.

Vectors are checked against `GET /v1/jobs/{id}` of the same texts (raw HTTP, not the client
under test). Cancel, auth and timeouts need no worker: they are in
tests/integration/test_client_idle_gateway.py.
"""

from __future__ import annotations

import asyncio
import glob
import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from loraq.stack import Stack
from loraq_client import AsyncLoraqClient, InvalidRequestError, LoraqClient, NotFoundError
from tests.cli import cli
from tests.constants import MODEL
from tests.e2e.helpers import dense, submit, wait_job

LORA = "org/qkv-r8"
TEXTS = [
    "The tenant must return the keys at the end of the lease.",
    "Aspirin reduces the risk of a second heart attack.",
    "short",
    "Embeddings map text to vectors.",
]


def reference(client: httpx.Client, texts: list[str], lora_id: str | None) -> np.ndarray:
    options = {"lora_id": lora_id} if lora_id else {}
    job = wait_job(client, submit(client, MODEL, texts, **options))
    assert job["status"] == "succeeded", job["error"]
    return dense(job)


def close(got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype == np.float32 and got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-6


# -- Client against the session stack ------------------------------------------------------------


@dataclass
class DataclassItem:
    """Stands in for sie_sdk.types.Item in versions where it is a dataclass."""

    text: str


@pytest.mark.parametrize("lora_id", [None, LORA])
def test_encode_equals_jobs_sync_and_async(
    stack: Stack, client: httpx.Client, lora_id: str | None
) -> None:
    want = reference(client, TEXTS, lora_id)
    options = {"lora_id": lora_id} if lora_id else None
    with LoraqClient(stack.url) as sdk:
        encoded = sdk.encode(MODEL, [DataclassItem(text=d) for d in TEXTS], options=options)
        job = sdk.submit(MODEL, TEXTS, options).wait(timeout=60)
    close(np.stack([r["dense"] for r in encoded]), want)
    close(job.vectors, want)
    assert job.data["lora_id"] == lora_id

    async def both() -> tuple[list[Any], Any]:
        async with AsyncLoraqClient(stack.url) as sdk:
            encoded = await sdk.encode(MODEL, [{"text": d} for d in TEXTS], options=options)
            job = await (await sdk.submit(MODEL, TEXTS, options)).wait(timeout=60)
            return encoded, job

    encoded, job = asyncio.run(both())
    close(np.stack([r["dense"] for r in encoded]), want)
    close(job.vectors, want)


def test_seed_code_with_only_the_import_changed(stack: Stack, client: httpx.Client) -> None:
    from loraq_client import Item
    from loraq_client import LoraqClient as SIEClient

    docs = TEXTS
    sie = SIEClient(stack.url)
    vectors = [
        r["dense"]
        for r in sie.encode(MODEL, [Item(text=d) for d in docs], options={"lora_id": LORA})
    ]
    sie.close()
    close(np.stack(vectors), reference(client, TEXTS, LORA))


def test_errors_from_the_stack(stack: Stack) -> None:
    with LoraqClient(stack.url) as sdk:
        with pytest.raises(NotFoundError) as caught:
            sdk.encode(MODEL, ["x"], options={"lora_id": "org/missing"})
        assert caught.value.code == "ADAPTER_NOT_FOUND"
        with pytest.raises(NotFoundError) as caught:
            sdk.get("job_" + "0" * 22)
        assert caught.value.code == "JOB_NOT_FOUND"
        with pytest.raises(InvalidRequestError) as refused:
            sdk.submit(MODEL, ["x"], {"lora_id": "../etc"})
        assert refused.value.code == "INVALID_LORA_ID"


def test_cli_encode_writes_jsonl_in_input_order(stack: Stack, client: httpx.Client) -> None:
    texts = [f"sentence number {i} about {TEXTS[i % len(TEXTS)]}" for i in range(10)]
    stdin = "\n".join([*texts[:5], "", *texts[5:]]) + "\n"  # the blank line is skipped
    args = ["encode", "--url", stack.url, "--model", MODEL, "--lora-id", LORA]
    done = cli(*args, "--job-size", "3", "--concurrency", "2", stdin=stdin)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line["index"] for line in lines] == [0, 1, 2, 3, 4, 6, 7, 8, 9, 10]
    assert [line["text"] for line in lines] == texts
    assert all(len(line["dense"]) == 384 for line in lines)
    got = np.array([line["dense"] for line in lines], dtype=np.float32)
    close(got, reference(client, texts, LORA))
    assert "encoded 10/10 texts (4/4 jobs)" in done.stderr
    done = cli("encode", "--url", stack.url, "--model", MODEL, "--lora-id", "org/gone", stdin=stdin)
    assert (done.returncode, done.stdout) == (1, "")
    assert "ADAPTER_NOT_FOUND (HTTP 404)" in done.stderr


def test_cli_submit_then_wait(stack: Stack, tmp_path: Path) -> None:
    (tmp_path / "texts.txt").write_text("\n".join(TEXTS) + "\n")
    env = {"LORAQ_URL": stack.url}
    done = cli("submit", "--model", MODEL, "--file", str(tmp_path / "texts.txt"), env=env)
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.strip()
    assert job_id.startswith("job_")
    done = cli("wait", job_id, "--timeout", "60", env=env)
    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)
    assert (job["id"], job["status"], job["n_items"]) == (job_id, "succeeded", len(TEXTS))
    done = cli("get", job_id, "--url", stack.url)
    assert json.loads(done.stdout)["result"] == job["result"]


# -- The real sie-sdk client ---------------------------------------------------------------------

#: The seed's client code, unchanged; only URL, MODEL and docs come from outside.
SIE_SNIPPET = """
import json, sys
URL, MODEL = sys.argv[1], sys.argv[2]
docs = json.load(sys.stdin)

from sie_sdk import SIEClient
from sie_sdk.types import Item
client = SIEClient(URL)
vectors = [r["dense"] for r in client.encode(MODEL, [Item(text=d) for d in docs],
                                              options={"lora_id": "org/qkv-r8"})]
base = [r["dense"] for r in client.encode(MODEL, [Item(text=d) for d in docs])]

kinds = {f"{type(v).__module__}.{type(v).__name__}:{v.dtype}" for v in vectors + base}
json.dump({"lora": [v.tolist() for v in vectors], "base": [v.tolist() for v in base],
           "kinds": sorted(kinds)}, sys.stdout)
"""


def python312() -> Path | None:
    roots = []
    if pyenv := shutil.which("pyenv"):
        found = subprocess.run([pyenv, "root"], capture_output=True, text=True, timeout=30)
        roots.append(found.stdout.strip())
    roots += [str(Path.home() / ".pyenv"), "/root/.pyenv"]
    for root in filter(None, roots):
        matches = sorted(glob.glob(f"{root}/versions/3.12*/bin/python3.12"))
        if matches:
            return Path(matches[-1])
    return None


@pytest.fixture(scope="session")
def sie_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Python 3.12 venv with sie-sdk from PyPI (sie-sdk needs Python >= 3.12)."""
    interpreter = python312()
    if interpreter is None:
        pytest.skip("no Python 3.12 interpreter under `pyenv root`/versions: sie-sdk needs >= 3.12")
    venv = tmp_path_factory.mktemp("sie-venv")
    subprocess.run([str(interpreter), "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    pip = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "sie-sdk"],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert pip.returncode == 0, f"pip install sie-sdk failed:\n{pip.stdout}\n{pip.stderr}"
    return python


def test_real_sie_sdk_client(stack: Stack, client: httpx.Client, sie_python: Path) -> None:
    done = subprocess.run(
        [str(sie_python), "-c", SIE_SNIPPET, stack.url, MODEL],
        input=json.dumps(TEXTS), capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["kinds"] == ["numpy.ndarray:float32"]
    close(np.array(out["lora"], dtype=np.float32), reference(client, TEXTS, LORA))
    close(np.array(out["base"], dtype=np.float32), reference(client, TEXTS, None))
