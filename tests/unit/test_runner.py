"""The job runner (`worker/runner.py`): its count of jobs in flight (which the worker's heartbeat
adds to its shard queue lengths as its backlog, the load the gateway routes on), duplicates of
held jobs, the dead-letter decision, and stopping a job cancelled while it computes."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

import fakeredis
import numpy as np
import pytest

from common import keys, token_ids
from common.job_store import AsyncJobStore, JobStore, Transition
from common.schemas import EncodeMessage, JobStatus, StoredJob
from common.settings import BatchSettings
from tests.fakes import DIMS, FakeAdapters, FakeEngine
from worker.batcher import Batcher, JobOutput
from worker.engine.types import Pause, Row
from worker.runner import JobRunner

pytestmark = pytest.mark.unit


class ClaimWatch:
    """A job store that notes the runner's in-flight count when a job is claimed, and answers
    that the job already finished (a redelivery: the runner skips it)."""

    def __init__(self) -> None:
        self.runner: JobRunner | None = None
        self.in_flight_at_claim: list[int] = []

    def start(self, job_id: str, now: float, worker: str = "") -> Transition:
        assert self.runner is not None
        self.in_flight_at_claim.append(self.runner.in_flight)
        return Transition(False, JobStatus.SUCCEEDED, 1)


def never_submit(rows: Any, job_id: str, bulk: bool) -> Future[JobOutput]:
    raise AssertionError("a skipped job is never encoded")


def test_a_job_is_in_flight_from_the_moment_its_message_is_taken() -> None:
    """The claim is a Redis round trip; a heartbeat taken during it must still count the job,
    which is no longer in its queue."""
    store = ClaimWatch()
    runner = JobRunner(store, FakeEngine(), FakeAdapters([]), never_submit)
    store.runner = runner
    message = EncodeMessage(
        job_id="j1", model=FakeEngine.model_id, lora_id=None, texts=["a"], normalize=None,
        truncate=True, enqueued_at=0.0,
    )  # fmt: skip
    runner.handle(message.model_dump())
    assert store.in_flight_at_claim == [1]
    assert runner.in_flight == 0


def record(server: fakeredis.FakeServer, job_id: str, texts: int = 3) -> EncodeMessage:
    """A job of tenant acme as the gateway creates it, its items counted against the quota."""
    message = EncodeMessage(
        job_id=job_id, model=FakeEngine.model_id, lora_id=None, texts=["t"] * texts,
        normalize=None, truncate=True, enqueued_at=0.0,
    )  # fmt: skip
    job = StoredJob(
        id=job_id, status=JobStatus.QUEUED, model=FakeEngine.model_id, n_items=texts,
        created_at=0.0, tenant="acme",
    )  # fmt: skip

    async def create() -> None:
        client = fakeredis.FakeAsyncRedis(server=server)
        await AsyncJobStore(client, 60).create(
            job, message.model_dump_json().encode(), "q", max_queued_items=10_000
        )
        await client.aclose()

    asyncio.run(create())
    return message


def encoded(rows: Sequence[Row], job_id: str, bulk: bool = False) -> Future[JobOutput]:
    future: Future[JobOutput] = Future()
    future.set_result(JobOutput(np.zeros((len(rows), DIMS), np.float32), 1.0))
    return future


def test_a_duplicate_of_a_job_a_live_worker_holds_is_dropped_without_counting() -> None:
    """The broker's visibility timeout and the sweeper send a slow job again while w1 still
    computes it: w2 drops each copy, counting no delivery. Once w1 is gone, a copy counts."""
    server = fakeredis.FakeServer()
    r = fakeredis.FakeRedis(server=server)
    store = JobStore(r, 60)
    payload = record(server, "j1").model_dump()
    store.start("j1", 1.0, "w1")
    duplicate_taker = JobRunner(store, FakeEngine(), FakeAdapters([]), never_submit, 1, "w2")
    for _ in range(5):
        duplicate_taker.handle(payload)
    job = store.get("j1")
    assert job is not None
    assert (job.status, job.attempts, job.worker) == (JobStatus.RUNNING, 1, "w1")

    r.delete(keys.job_hold("j1"))  # w1 died: its hold lapsed
    JobRunner(store, FakeEngine(), FakeAdapters([]), encoded, 3, "w2").handle(payload)
    job = store.get("j1")
    assert job is not None
    assert (job.status, job.attempts, job.worker) == (JobStatus.SUCCEEDED, 2, "w2")


def test_the_dead_letter_says_what_happened() -> None:
    server = fakeredis.FakeServer()
    r = fakeredis.FakeRedis(server=server)
    store = JobStore(r, 60)
    payload = record(server, "j1").model_dump()
    store.start("j1", 1.0, "w1")
    r.delete(keys.job_hold("j1"))  # w1 died on it
    JobRunner(store, FakeEngine(), FakeAdapters([]), never_submit, 1, "w2").handle(payload)
    job = store.get("j1")
    assert job is not None
    assert (job.status, job.error_code) == (JobStatus.FAILED, "REDELIVERY_LIMIT")
    assert job.error_message is not None
    assert "started 2 times (limit 1)" in job.error_message
    assert "stopped before storing a result" in job.error_message


def test_a_job_cancelled_while_it_computes_stops_and_then_frees_its_quota() -> None:
    """The cancel lands during the job's first batch: its other rows are never encoded, its
    items stay counted until the runner has stopped, and then leave the tenant's quota."""
    server = fakeredis.FakeServer()
    r = fakeredis.FakeRedis(server=server)
    store = JobStore(r, 60)
    payload = record(server, "j1", texts=8).model_dump()
    engine = FakeEngine()
    seen: list[tuple[list[str], bytes | str | None]] = []

    def encode_while_cancelled(rows: list[Row], pause: Pause) -> np.ndarray:
        async def cancel() -> None:
            client = fakeredis.FakeAsyncRedis(server=server)
            await AsyncJobStore(client, 60).cancel("j1", 2.0)
            await client.aclose()

        asyncio.run(cancel())
        seen.append((runner.holding(), r.hget(keys.QUEUED_ITEMS, "acme")))
        return engine.encode(rows, pause)

    batcher = Batcher(
        encode_while_cancelled, DIMS, BatchSettings(max_items=1, max_wait_ms=0),
        ended=store.ended, check_every_s=0,
    )  # fmt: skip
    runner = JobRunner(store, engine, FakeAdapters([]), batcher.submit, 3, "w1")
    batcher.start()
    try:
        runner.handle(payload)
    finally:
        batcher.stop(timeout=5)
    assert seen == [(["j1"], b"8")], "one batch, while the items were still counted"
    assert sum(len(batch) for batch in engine.batches) == 1
    job = store.get("j1")
    assert job is not None
    assert job.status is JobStatus.CANCELLED
    assert r.hget(keys.QUEUED_ITEMS, "acme") == b"0"
    assert r.exists(keys.job_hold("j1")) == 0
    assert r.zscore(keys.PENDING_ZSET, "j1") is None
    assert runner.holding() == []


def test_the_gateways_token_ids_are_used_only_under_this_workers_tokenizer() -> None:
    """Ids made by the same tokenizer are encoded as they are; ids from another tokenizer (a
    gateway with other model files), or ids that do not fit the items, are dropped and the
    texts tokenized here."""
    server = fakeredis.FakeServer()
    r = fakeredis.FakeRedis(server=server)
    store = JobStore(r, 60)
    engine = FakeEngine()
    given = [[7, 8, 9], [10]]
    seen: list[list[list[int]]] = []

    def capture(rows: Sequence[Row], job_id: str, bulk: bool) -> Future[JobOutput]:
        seen.append([row.tokens for row in rows])
        return encoded(rows, job_id)

    runner = JobRunner(store, engine, FakeAdapters([]), capture)
    variants = {
        "j1": token_ids.pack(engine.tokenizer_id, given),
        "j2": token_ids.pack("another-tokenizer", given),
        "j3": token_ids.pack(engine.tokenizer_id, [[7, 8, 9]]),
    }
    for job_id, ids in variants.items():
        message = record(server, job_id, texts=2).model_copy(update={"token_ids": ids})
        runner.handle(message.model_dump())
    own = engine.tokenize(["t", "t"], True)
    assert seen == [given, own, own]
