"""What the gateway holds for its lifetime, built in the app's lifespan from the settings."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import redis.asyncio as aioredis
from tokenizers import Tokenizer

from api.auth import RateLimiter
from api.idempotency import Idempotency
from api.publisher import Publisher
from api.routing_table import RoutingTable
from api.waiter import CompletionWaiter
from common.jobs import AsyncJobStore
from common.model_files import load_tokenizer, max_length
from common.settings import Settings, resolve_model_path

log = logging.getLogger(__name__)


@dataclass
class Gateway:
    settings: Settings
    redis: aioredis.Redis
    store: AsyncJobStore
    publisher: Publisher
    waiter: CompletionWaiter
    routing: RoutingTable
    rate: RateLimiter
    idempotency: Idempotency
    _tokenizers: dict[str, tuple[Tokenizer, int] | None] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def model_dir(self, model_id: str) -> Path:
        return resolve_model_path(self.settings.models[model_id])

    def tokenizer(self, model_id: str) -> tuple[Tokenizer, int] | None:
        """Loaded on first use: only `truncate=false` requests need one at the gateway. A gateway
        without the model's files (a slim gateway image) leaves the length check to the worker,
        which fails such a job with the same `INPUT_TOO_LONG`."""
        with self._lock:
            if model_id not in self._tokenizers:
                try:
                    path = self.model_dir(model_id)
                    self._tokenizers[model_id] = (load_tokenizer(path), max_length(path))
                except Exception as exc:
                    log.warning("no tokenizer for %s at the gateway (%s)", model_id, exc)
                    self._tokenizers[model_id] = None
            return self._tokenizers[model_id]
