"""What a worker does with one job: claim it, tokenize, lease its adapter, batch, store.

Runs in a Celery task thread, one job per thread; the only shared, heavy things are the batcher's
thread (which owns the forward pass) and the adapter cache. Reliability rules, each in one place:
- A job whose record is already terminal (a redelivery of finished work, a cancelled job) is
  skipped; outcome writes are compare-and-set, so a redelivered message never changes a visible
  result.
- The claim gives this worker a hold on the job, which the heartbeat renews (`holding`) while a
  task thread works on it. A message for a job another live worker holds (the broker's
  visibility timeout or the sweeper sent it again while it is computed) is a duplicate: dropped,
  counting nothing. Only when the holder is gone does a delivery count as one more attempt.
- A job started more than `max_deliveries` times (each holder stopped before storing an outcome)
  is failed with `REDELIVERY_LIMIT` and its message copied to the dead-letter list, instead of
  killing workers forever.
- A job that ends elsewhere while it computes (a cancel) stops at the batcher's next check; the
  runner then lets go of it, which frees its items from the tenant's quota (`JobStore.let_go`).
- Redis errors while claiming or storing are retried briefly (`worker.retries`), then surface as
  `RetryLater`: the message is not acked, so the broker delivers it again once Redis is back.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, Protocol

import numpy as np
import redis

from common import metrics, token_ids
from common.errors import LoraqError, ModelNotFound, RedeliveryLimit, WorkerError
from common.job_store import JobStore, Transition
from common.schemas import EncodeMessage, JobStatus
from worker.adapter_cache import Lease
from worker.batcher import JobOutput, JobStopped
from worker.engine.types import Row
from worker.retries import with_redis_retries

log = logging.getLogger(__name__)

#: The dead-letter list keeps this many most recent entries.
DEAD_LETTER_KEEP = 10_000


class Tokenizer(Protocol):
    model_id: str
    default_normalize: bool
    tokenizer_id: str

    def tokenize(self, texts: list[str], truncate: bool) -> list[list[int]]: ...


class Leases(Protocol):
    def acquire(self, lora_id: str, timeout: float | None = None) -> Lease: ...

    def release(self, lease: Lease) -> None: ...


class JobRunner:
    def __init__(
        self,
        store: JobStore,
        tokenizer: Tokenizer,
        adapters: Leases,
        submit: Callable[[Sequence[Row], str, bool], Future[JobOutput]],
        max_deliveries: int = 3,
        worker_id: str = "",
        on_webhook_due: Callable[[str], None] = lambda job_id: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.worker_id = worker_id
        self._on_webhook_due = on_webhook_due
        self._store = store
        self._tokenizer = tokenizer
        self._adapters = adapters
        self._submit = submit
        self._max_deliveries = max_deliveries
        self._clock = clock
        self._lock = threading.Lock()
        self._holding: set[str] = set()
        self.in_flight = 0

    def holding(self) -> list[str]:
        """The jobs whose holds this worker's heartbeat renews: those a task thread works on."""
        with self._lock:
            return list(self._holding)

    def handle(self, payload: dict[str, Any]) -> None:
        """Counted in `in_flight` from the moment the task thread has the message, before the
        claim's Redis round trip, so the heartbeat's backlog (shard queue lengths + this) still
        counts a job that has left its queue."""
        with self._lock:
            self.in_flight += 1
        try:
            self._handle(payload)
        finally:
            with self._lock:
                self.in_flight -= 1

    def _handle(self, payload: dict[str, Any]) -> None:
        message = EncodeMessage.model_validate(payload)
        job_id = message.job_id
        claim: Transition = with_redis_retries(
            lambda: self._store.start(job_id, self._clock(), self.worker_id)
        )
        if not claim.applied:
            self._skip(job_id, claim.previous)
            return
        with self._lock:
            self._holding.add(job_id)
        try:
            self._work(payload, message, claim.attempts)
        except BaseException:
            self._let_go(job_id)  # e.g. `RetryLater`: its redelivery need not wait for the hold
            raise
        finally:
            with self._lock:
                self._holding.discard(job_id)

    def _skip(self, job_id: str, previous: JobStatus | None) -> None:
        if previous is JobStatus.RUNNING:
            log.info("dropping a duplicate message of job %s: a live worker holds it", job_id)
            return
        log.info("skipping job %s: it is %s", job_id, previous or "gone")
        if previous is JobStatus.CANCELLED:
            self._let_go(job_id)  # if its holder died computing it, its quota is freed now

    def _work(self, payload: dict[str, Any], message: EncodeMessage, attempts: int) -> None:
        if attempts > 1:
            metrics.REDELIVERIES.inc()
        if attempts > self._max_deliveries:
            self._dead_letter(payload, attempts)
            return
        metrics.JOB_QUEUE_WAIT.labels(message.model).observe(self._clock() - message.enqueued_at)
        self._run(message)

    def _let_go(self, job_id: str) -> None:
        """Stop holding a job left without an outcome from this worker, so a redelivery takes it
        at once, and a cancelled job's items leave its tenant's quota. One try: if Redis is
        unreachable, the hold lapses within a few heartbeats and the sweeper settles the rest."""
        try:
            self._store.let_go(job_id, self.worker_id)
        except redis.RedisError as exc:
            log.warning("could not let go of job %s: %s", job_id, exc)

    def _run(self, message: EncodeMessage) -> None:
        job_id = message.job_id
        try:
            output, lease = self._compute(message)
        except JobStopped:
            log.info("job %s ended elsewhere (e.g. cancelled); stopped computing it", job_id)
            self._let_go(job_id)
            return
        except LoraqError as exc:
            self._fail(message, exc)
            return
        except Exception:  # the exception's text is for the worker's log, not for the tenant
            log.exception("job %s failed", job_id)
            self._fail(message, WorkerError("the worker failed on this job (details in its log)"))
            return
        fields = {
            "dims": output.vectors.shape[1],
            "n_tokens": output.tokens,
            "inference_ms": round(output.inference_ms, 3),
            "adapter_hash": lease.content_hash if lease else None,
        }
        data = np.ascontiguousarray(output.vectors, dtype="<f4").tobytes()
        outcome = with_redis_retries(
            lambda: self._store.succeed(job_id, self._clock(), data, fields)
        )
        metrics.JOB_INFERENCE.labels(message.model).observe(output.inference_ms / 1000)
        self._finished(message, outcome, "succeeded", "")

    def _fail(self, message: EncodeMessage, error: LoraqError) -> None:
        outcome = with_redis_retries(
            lambda: self._store.fail(message.job_id, self._clock(), error.code, error.message)
        )
        self._finished(message, outcome, "failed", error.code)

    def _finished(
        self, message: EncodeMessage, outcome: Transition, status: str, reason: str
    ) -> None:
        """Count the outcome (if this delivery set it), and kick the webhook delivery now; if
        this publish is lost, the outbox sweep sends it."""
        if not outcome.applied:
            self._let_go(message.job_id)  # it ended meanwhile (a cancel): free its quota now
            return
        metrics.JOBS_FINISHED.labels(message.model, status, reason).inc()
        metrics.JOB_TOTAL.labels(message.model).observe(self._clock() - message.enqueued_at)
        if outcome.webhook_due:
            try:
                self._on_webhook_due(outcome.job_id)
            except Exception:
                log.exception(
                    "could not queue the webhook of %s; the outbox sweep will", outcome.job_id
                )

    def _dead_letter(self, payload: dict[str, Any], attempts: int) -> None:
        metrics.DEAD_LETTERS.inc()
        message = EncodeMessage.model_validate(payload)
        job_id = message.job_id
        error = RedeliveryLimit(
            f"job {job_id} was started {attempts} times (limit {self._max_deliveries}), and "
            "each time the worker computing it stopped before storing a result (it died, hung "
            "past its heartbeat, or lost Redis), so it was moved to the dead-letter list"
        )
        log.error("%s", error.message)
        entry = json.dumps(
            {"job_id": job_id, "attempts": attempts, "at": self._clock(), "message": payload}
        )

        with_redis_retries(lambda: self._store.dead_letter(entry, DEAD_LETTER_KEEP))
        self._fail(message, error)

    def _tokens(self, message: EncodeMessage) -> list[list[int]]:
        """The gateway's token ids when this worker's tokenizer would have made the same ones
        (they were checked for length there), else the texts tokenized here."""
        ids = message.token_ids
        if ids is not None and ids.tokenizer == self._tokenizer.tokenizer_id:
            try:
                return token_ids.unpack(ids, len(message.texts))
            except ValueError as exc:
                log.warning("job %s: unusable token ids (%s); tokenizing", message.job_id, exc)
        return self._tokenizer.tokenize(message.texts, message.truncate)

    def _compute(self, message: EncodeMessage) -> tuple[JobOutput, Lease | None]:
        if message.model != self._tokenizer.model_id:
            raise ModelNotFound(
                f"this worker serves {self._tokenizer.model_id!r}, not {message.model!r}"
            )
        tokens = self._tokens(message)
        normalize = (
            self._tokenizer.default_normalize if message.normalize is None else message.normalize
        )
        lease = self._adapters.acquire(message.lora_id) if message.lora_id else None
        try:
            slot = lease.slot if lease else None
            rows = [Row(t, slot, normalize) for t in tokens]
            return self._submit(rows, message.job_id, message.bulk).result(), lease
        finally:
            if lease is not None:
                self._adapters.release(lease)
