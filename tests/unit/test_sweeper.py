"""The sweeper publishes lost messages again, once per interval across workers."""

from __future__ import annotations

import asyncio

import fakeredis

from common import keys
from common.jobs import AsyncJobStore, JobStore
from common.schemas import EncodeMessage, JobStatus, StoredJob
from worker.sweeper import Sweeper

MODEL = "org/model"


def message(job_id: str) -> EncodeMessage:
    return EncodeMessage(
        job_id=job_id, model=MODEL, lora_id=None, texts=["x"], normalize=None, truncate=True,
        enqueued_at=0.0,
    )  # fmt: skip


def submit(server: fakeredis.FakeServer, job_id: str, created_at: float) -> None:
    async def create() -> None:
        client = fakeredis.FakeAsyncRedis(server=server)
        job = StoredJob(
            id=job_id, status=JobStatus.QUEUED, model=MODEL, n_items=1, created_at=created_at
        )
        await AsyncJobStore(client, 60, redeliver_after_s=10).create(
            job, message(job_id).model_dump_json().encode()
        )
        await client.aclose()

    asyncio.run(create())


def test_overdue_jobs_are_published_again_and_rescheduled() -> None:
    server = fakeredis.FakeServer()
    store = JobStore(fakeredis.FakeRedis(server=server), 60, redeliver_after_s=10)
    submit(server, "job_lost", created_at=0.0)
    submit(server, "job_fresh", created_at=95.0)
    submit(server, "job_done", created_at=0.0)
    store.start("job_done", 1.0)
    store.succeed("job_done", 2.0, b"v", {})
    published: list[tuple[str, str]] = []
    sweeper = Sweeper(store, lambda m, q: published.append((m.job_id, q)), 5.0, "w1")

    assert sweeper.sweep(now=100.0) == 1
    assert published == [("job_lost", keys.model_queue(MODEL))]
    assert store.client.zscore(keys.PENDING_ZSET, "job_lost") == 110.0
    # Another worker in the same interval finds the sweep taken.
    other = Sweeper(store, lambda m, q: published.append((m.job_id, q)), 5.0, "w2")
    assert other.sweep(now=120.0) == 0
    store.client.delete(keys.SWEEP_LOCK)
    assert other.sweep(now=120.0) == 2  # job_lost again (still unfinished) and job_fresh
    assert sweeper.republished + other.republished == 3


def test_a_job_finished_meanwhile_is_dropped_from_the_index() -> None:
    server = fakeredis.FakeServer()
    store = JobStore(fakeredis.FakeRedis(server=server), 60, redeliver_after_s=10)
    submit(server, "job_x", created_at=0.0)
    store.client.delete(keys.job_message("job_x"))  # as if expired
    published: list[str] = []
    assert Sweeper(store, lambda m, q: published.append(m.job_id), 5.0, "w").sweep(50.0) == 0
    assert published == []
    assert store.client.zscore(keys.PENDING_ZSET, "job_x") is None
