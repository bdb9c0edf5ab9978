"""Schemathesis against the real gateway: its own OpenAPI document, every operation, API keys on.

A private stack (uvicorn gateway, one worker on a tiny model, redis-server) with one key; the
fuzzer sends the key on every request (and checks that leaving it out is refused), JSON and
msgpack bodies (`schemathesis_hooks`), schema-valid and schema-violating data, and follows the
document's links from a created job to reading and cancelling it. What it must find: no server
error, no answer its documented schema, status codes, content types or headers do not allow,
no schema-violating request accepted, and a 405 with a true `Allow` for undocumented methods.

The run is bounded (`MAX_EXAMPLES` per operation and phase, a fixed seed for a reproducible
run); raise them locally to search harder. Its report is printed when it fails.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from api.auth import new_key
from loraq.stack import Stack
from tests.e2e.tiny import tiny_stack

ROOT = Path(__file__).resolve().parents[2]
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
    "missing_required_header",
    "unsupported_method",
    "allow_header_conformance",
    "ignored_auth",
)
PHASES = ("examples", "coverage", "fuzzing", "stateful")
MAX_EXAMPLES = 10
SEED = 20261203


@pytest.fixture(scope="module")
def keyed_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, str]]:
    key, digest = new_key()
    # Quotas high enough that the fuzzer's pace never meets them (429 is documented anyway).
    entry = {"tenant": "fuzz", "sha256": digest, "rate_per_s": 1000, "burst": 1000}
    env = {
        "LORAQ_AUTH__KEYS": json.dumps([entry]),
        "LORAQ_WEBHOOKS__SECRET": "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    }
    with tiny_stack(tmp_path_factory.mktemp("fuzz"), env) as stack:
        yield stack, key


def test_gateway_keeps_its_openapi_document(keyed_stack: tuple[Stack, str], tmp_path: Path) -> None:
    stack, key = keyed_stack
    argv = [
        sys.executable, "-m", "schemathesis.cli", "run", f"{stack.url}/openapi.json",
        "--checks", ",".join(CHECKS),
        "--phases", ",".join(PHASES),
        "--max-examples", str(MAX_EXAMPLES),
        "--seed", str(SEED),
        "--workers", "1",
        "--generation-database", "none",
        "--header", f"Authorization: Bearer {key}",
        "--request-timeout", "120",
    ]  # fmt: skip
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "tests.e2e.schemathesis_hooks",
        "PYTHONPATH": str(ROOT),
        "NO_COLOR": "1",
    }
    # In a temp dir: Hypothesis and Schemathesis leave caches in the working directory.
    run = subprocess.run(
        argv, cwd=tmp_path, env=env, capture_output=True, text=True, check=False, timeout=600
    )
    report = run.stdout[-20_000:] + run.stderr[-5_000:]
    assert run.returncode == 0, report
    generated, passed = map(int, re.findall(r"(\d+) generated, (\d+) passed", run.stdout)[-1])
    assert generated == passed > 0, report
    paths = httpx.get(f"{stack.url}/openapi.json", timeout=30).json()["paths"]
    assert f"Tested: {sum(len(ops) for ops in paths.values())}" in run.stdout, report
