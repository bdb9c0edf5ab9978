"""A private stack on a tiny random model: its own redis-server, gateway and workers, for tests
that need their own settings (auth on, webhooks, short timeouts) and start in seconds."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from loraq.stack import Stack, start_redis
from loraq.testing import save_tiny_model
from tests.constants import MODEL


@contextmanager
def tiny_stack(
    root: Path, env: Mapping[str, str], workers: int = 1, webhooks: bool = False
) -> Iterator[Stack]:
    """`root/model` holds the model (made here if missing); adapters go in `root/adapters`."""
    model_dir = root / "model"
    if not (model_dir / "config.json").exists():
        save_tiny_model(model_dir)
    redis_proc, url = start_redis(root / "redis")
    full_env = {
        "LORAQ_REDIS_URL": url,
        "LORAQ_MODELS": json.dumps({MODEL: str(model_dir)}),
        "LORAQ_ADAPTERS__DIR": str(root / "adapters"),
        "LORAQ_WORKER__TORCH_THREADS": "1",
        "LORAQ_BULK__STORE": str(root / "files"),
        "LORAQ_BULK__POLL_S": "0.1",
        **env,
    }
    stack = Stack(env=full_env, log_dir=root / "logs")
    try:
        stack.start_gateway()
        for _ in range(workers):
            stack.start_worker()
        if webhooks:
            stack.start_webhooks()
        stack.wait_ready()
        yield stack
    finally:
        stack.stop()
        redis_proc.stop()
