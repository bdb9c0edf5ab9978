"""Fast stand-ins for the torch side, for tests of the job system around it.

`FakeEngine` gives every text a deterministic vector that depends on the adapter slot, so tests
can check routing of results without a model; `FakeAdapters` leases a fixed slot per adapter id.
"""

from __future__ import annotations

import hashlib
import threading

import numpy as np

from common.errors import AdapterNotFound, InputTooLong
from tests.constants import FAKE_MODEL
from worker.adapter_cache import Lease
from worker.engine.types import Pause, Row, no_pause

DIMS = 8


def fake_vector(tokens: list[int], slot: int | None) -> np.ndarray:
    seed = hashlib.sha256(bytes(tokens) + str(slot).encode()).digest()
    return np.frombuffer(seed, dtype=np.uint8)[:DIMS].astype(np.float32) / 255


class FakeEngine:
    model_id = FAKE_MODEL
    default_normalize = False
    tokenizer_id = "fake-bytes"
    dims = DIMS
    max_length = 32

    def __init__(self) -> None:
        self.batches: list[list[Row]] = []

    def tokenize(self, texts: list[str], truncate: bool) -> list[list[int]]:
        out = []
        for i, text in enumerate(texts):
            tokens = list(text.encode()[: 4 * self.max_length])
            if len(tokens) > self.max_length and not truncate:
                raise InputTooLong(f"item {i} is too long")
            out.append(tokens[: self.max_length])
        return out

    def encode(self, rows: list[Row], pause: Pause = no_pause) -> np.ndarray:
        pause()
        self.batches.append(rows)
        if any(bytes(r.tokens).startswith(b"POISON") for r in rows):
            raise RuntimeError("poison row in batch")
        return np.stack([fake_vector(r.tokens, r.slot) for r in rows])


class FakeAdapters:
    def __init__(self, known: list[str]) -> None:
        self.slots = {lora_id: i for i, lora_id in enumerate(known)}
        self.leased = 0
        self.prefetched: list[str] = []
        self._lock = threading.Lock()

    def acquire(self, lora_id: str, timeout: float | None = None) -> Lease:
        if lora_id not in self.slots:
            raise AdapterNotFound(f"adapter {lora_id!r} not found")
        with self._lock:
            self.leased += 1
        return Lease(lora_id, self.slots[lora_id], f"hash-{lora_id}")

    def release(self, lease: Lease) -> None:
        with self._lock:
            self.leased -= 1

    def prefetch(self, lora_id: str) -> None:
        with self._lock:
            self.prefetched.append(lora_id)
