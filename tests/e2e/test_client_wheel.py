"""The client as a user installs it: its wheel, built here, alone in a fresh venv (not this one)
with its dependencies from the package index, against the e2e stack.

The point of the separate distribution is what that venv lacks (torch, Celery, FastAPI, the
server's settings, orjson too, so the standard-library JSON path runs for real, and pyarrow,
which only reading parquet batch output needs) and what its `loraq` command offers: the client
commands only, since the server's come from an entry point that only the server distribution
declares.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from loraq.stack import Stack
from tests.constants import MODEL
from tests.e2e.helpers import dense, submit, wait_job

REPO = Path(__file__).resolve().parents[2]
CLIENT = REPO / "clients" / "python"
#: What a client-only install must not bring: the heavy stacks and the server itself.
SERVER_ONLY = ["torch", "transformers", "celery", "fastapi", "pydantic", "pydantic_settings"]
CLIENT_COMMANDS = {"submit", "get", "wait", "cancel", "encode", "batch", "adapters"}
TEXTS = ["The tenant returns the keys at the end of the lease.", "short", "Ünïcode text"]

PROBE = """
import importlib.util, json, sys
json.dump({m: importlib.util.find_spec(m) is not None for m in sys.argv[1:]}, sys.stdout)
"""
SDK_SCRIPT = """
import json, sys
from loraq_client import LoraqClient

url, model, texts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
with LoraqClient(url) as client:
    job = client.submit(model, texts).wait(timeout=120)
    encoded = client.encode(model, texts)
json.dump({"status": job.status, "shape": list(job.vectors.shape),
           "dtype": str(job.vectors.dtype), "vectors": job.vectors.tolist(),
           "encoded": [r["dense"].tolist() for r in encoded]}, sys.stdout)
"""


def close(got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype == np.float32 and got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-6


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bin/ of a fresh venv holding the client wheel and what it depends on."""
    root = tmp_path_factory.mktemp("client-wheel")
    # Built from a copy: an in-tree build leaves build/ and *.egg-info in the checkout.
    source = root / "source"
    ignore = shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    shutil.copytree(CLIENT, source, ignore=ignore)
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", str(source)]
    run(*pip_wheel, "-w", str(root / "dist"))
    (wheel,) = (root / "dist").glob("loraq_client-0.1.0-*.whl")
    run(sys.executable, "-m", "venv", str(root / "venv"))
    bin_dir = root / "venv" / "bin"
    run(str(bin_dir / "python"), "-m", "pip", "install", "--quiet", str(wheel))
    return bin_dir


def run(*argv: str, stdin: str = "", timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Outside the checkout and this venv, so nothing of either leaks in through the working
    directory or the environment."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env = {k: v for k, v in env.items() if not k.startswith("LORAQ_")}
    done = subprocess.run(
        argv, input=stdin, capture_output=True, text=True, timeout=timeout, env=env, cwd="/"
    )
    assert done.returncode == 0, f"{argv}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


def commands(help_text: str) -> set[str]:
    found = re.search(r"\{([\w,-]+)\}", help_text)
    assert found, help_text
    return set(found.group(1).split(","))


def test_the_wheel_installs_without_the_server_stack(venv: Path) -> None:
    modules = [*SERVER_ONLY, "loraq", "api", "common", "orjson", "pyarrow"]
    modules += ["loraq_client", "httpx", "numpy"]
    found = json.loads(run(str(venv / "python"), "-c", PROBE, *modules).stdout)
    assert [m for m in modules if found[m]] == ["loraq_client", "httpx", "numpy"]


def test_loraq_lists_only_the_client_commands(venv: Path) -> None:
    assert commands(run(str(venv / "loraq"), "--help").stdout) == CLIENT_COMMANDS
    refused = subprocess.run([venv / "loraq", "gateway"], capture_output=True, text=True, cwd="/")
    assert refused.returncode == 2 and "invalid choice: 'gateway'" in refused.stderr
    # Where the server is installed too (this venv), the same command has its commands.
    here = run(str(Path(sys.executable).parent / "loraq"), "--help").stdout
    assert commands(here) >= CLIENT_COMMANDS | {"gateway", "worker", "webhooks", "demo", "keys"}


def test_sdk_from_the_wheel_against_the_stack(
    venv: Path, stack: Stack, client: httpx.Client
) -> None:
    want = dense(wait_job(client, submit(client, MODEL, TEXTS)))
    out = json.loads(
        run(str(venv / "python"), "-c", SDK_SCRIPT, stack.url, MODEL, json.dumps(TEXTS)).stdout
    )
    assert (out["status"], out["shape"], out["dtype"]) == ("succeeded", [3, 384], "float32")
    close(np.array(out["vectors"], dtype=np.float32), want)
    close(np.array(out["encoded"], dtype=np.float32), want)


def test_cli_from_the_wheel_against_the_stack(
    venv: Path, stack: Stack, client: httpx.Client
) -> None:
    loraq = str(venv / "loraq")
    stdin = "\n".join(TEXTS) + "\n"
    job_id = run(loraq, "submit", "--url", stack.url, "--model", MODEL, stdin=stdin).stdout.strip()
    assert re.fullmatch(r"job_[A-Za-z0-9_-]+", job_id), job_id
    job = json.loads(run(loraq, "wait", job_id, "--url", stack.url, "--timeout", "120").stdout)
    assert (job["id"], job["status"], job["n_items"]) == (job_id, "succeeded", len(TEXTS))
    want = dense(wait_job(client, job_id))
    # encode writes its JSON lines through the standard library here (no orjson).
    done = run(
        loraq, "encode", "--url", stack.url, "--model", MODEL, "--job-size", "2", stdin=stdin
    )
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(line["index"], line["text"]) for line in lines] == list(enumerate(TEXTS))
    close(np.array([line["dense"] for line in lines], dtype=np.float32), want)
    assert "encoded 3/3 texts (2/2 jobs)" in done.stderr
