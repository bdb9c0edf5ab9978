"""What a worker does with one job: claim it, tokenize, lease its adapter, batch, store.

Runs in a Celery task thread, one job per thread; the only shared, heavy things are the batcher's
thread (which owns the forward pass) and the adapter cache. A job whose record is already terminal
(a redelivery of finished work, a cancelled job) is skipped, and outcome writes are
compare-and-set, so a redelivered message never changes a visible result.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, Protocol

import numpy as np

from common.errors import LoraqError, ModelNotFound, WorkerError
from common.jobs import JobStore
from common.schemas import EncodeMessage
from worker.adapter_cache import Lease
from worker.batcher import JobOutput, Row

log = logging.getLogger(__name__)


class Tokenizer(Protocol):
    model_id: str
    default_normalize: bool

    def tokenize(self, texts: list[str], truncate: bool) -> list[list[int]]: ...


class Leases(Protocol):
    def acquire(self, lora_id: str, timeout: float | None = None) -> Lease: ...

    def release(self, lease: Lease) -> None: ...


class JobRunner:
    def __init__(
        self,
        store: JobStore,
        engine: Tokenizer,
        adapters: Leases,
        submit: Callable[[Sequence[Row]], Future[JobOutput]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._engine = engine
        self._adapters = adapters
        self._submit = submit
        self._clock = clock

    def handle(self, payload: dict[str, Any]) -> None:
        message = EncodeMessage.model_validate(payload)
        claim = self._store.start(message.job_id, self._clock())
        if not claim.applied:
            log.info("skipping job %s: it is %s", message.job_id, claim.previous or "gone")
            return
        try:
            output, lease = self._compute(message)
        except LoraqError as exc:
            self._store.fail(message.job_id, self._clock(), exc.code, exc.message)
            return
        except Exception as exc:
            log.exception("job %s failed", message.job_id)
            err = WorkerError(f"worker error: {type(exc).__name__}: {exc}")
            self._store.fail(message.job_id, self._clock(), err.code, err.message)
            return
        fields = {
            "dims": output.vectors.shape[1],
            "inference_ms": round(output.inference_ms, 3),
            "adapter_hash": lease.content_hash if lease else None,
        }
        vectors = np.ascontiguousarray(output.vectors, dtype="<f4")
        self._store.succeed(message.job_id, self._clock(), vectors.tobytes(), fields)

    def _compute(self, message: EncodeMessage) -> tuple[JobOutput, Lease | None]:
        if message.model != self._engine.model_id:
            raise ModelNotFound(
                f"this worker serves {self._engine.model_id!r}, not {message.model!r}"
            )
        tokens = self._engine.tokenize(message.texts, message.truncate)
        normalize = (
            self._engine.default_normalize if message.normalize is None else message.normalize
        )
        lease = self._adapters.acquire(message.lora_id) if message.lora_id else None
        try:
            slot = lease.slot if lease else None
            rows = [Row(t, slot, normalize) for t in tokens]
            return self._submit(rows).result(), lease
        finally:
            if lease is not None:
                self._adapters.release(lease)
