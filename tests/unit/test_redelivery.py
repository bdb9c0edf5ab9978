"""The sweeper publishes lost messages again, once per interval across workers, never for a job
a live worker holds, and settles cancelled jobs whose worker died."""

from __future__ import annotations

import asyncio

import fakeredis
import pytest

from common import keys
from common.job_store import AsyncJobStore, JobStore
from common.schemas import EncodeMessage, JobStatus, StoredJob
from tests.constants import FAKE_MODEL
from worker.redelivery import Overdue, Redeliverer, decide


def message(job_id: str) -> EncodeMessage:
    return EncodeMessage(
        job_id=job_id, model=FAKE_MODEL, lora_id=None, texts=["x"], normalize=None, truncate=True,
        enqueued_at=0.0,
    )  # fmt: skip


def submit(
    server: fakeredis.FakeServer, job_id: str, created_at: float, tenant: str | None = None
) -> None:
    async def create() -> None:
        client = fakeredis.FakeAsyncRedis(server=server)
        job = StoredJob(
            id=job_id, status=JobStatus.QUEUED, model=FAKE_MODEL, n_items=1, created_at=created_at,
            tenant=tenant,
        )  # fmt: skip
        await AsyncJobStore(client, 60, redeliver_after_s=10).create(
            job, message(job_id).model_dump_json().encode(), "q", max_queued_items=100
        )
        await client.aclose()

    asyncio.run(create())


def test_overdue_jobs_are_published_again_and_rescheduled() -> None:
    server = fakeredis.FakeServer()
    r = fakeredis.FakeRedis(server=server)
    store = JobStore(r, 60, redeliver_after_s=10)
    submit(server, "job_lost", created_at=0.0)
    submit(server, "job_fresh", created_at=95.0)
    submit(server, "job_done", created_at=0.0)
    store.start("job_done", 1.0)
    store.succeed("job_done", 2.0, b"v", {})
    published: list[tuple[str, str]] = []
    sweeper = Redeliverer(store, lambda m, q: published.append((m.job_id, q)), 5.0, "w1")

    assert sweeper.sweep(now=100.0) == 1
    assert published == [("job_lost", keys.model_queue(FAKE_MODEL))]
    assert r.zscore(keys.PENDING_ZSET, "job_lost") == 110.0
    # Another worker in the same interval finds the sweep taken.
    other = Redeliverer(store, lambda m, q: published.append((m.job_id, q)), 5.0, "w2")
    assert other.sweep(now=120.0) == 0
    r.delete(keys.SWEEP_LOCK)
    assert other.sweep(now=120.0) == 2  # job_lost again (still unfinished) and job_fresh
    assert sweeper.republished + other.republished == 3


def test_a_job_finished_meanwhile_is_dropped_from_the_index() -> None:
    server = fakeredis.FakeServer()
    r = fakeredis.FakeRedis(server=server)
    store = JobStore(r, 60, redeliver_after_s=10)
    submit(server, "job_x", created_at=0.0)
    r.delete(keys.job_message("job_x"))  # as if expired
    published: list[str] = []
    assert Redeliverer(store, lambda m, q: published.append(m.job_id), 5.0, "w").sweep(50.0) == 0
    assert published == []
    assert r.zscore(keys.PENDING_ZSET, "job_x") is None


@pytest.mark.parametrize(
    ("status", "held", "has_message", "action"),
    [
        (JobStatus.QUEUED, False, True, Overdue.REPUBLISH),  # its message was lost
        (JobStatus.RUNNING, False, True, Overdue.REPUBLISH),  # its worker died
        (JobStatus.RUNNING, True, True, Overdue.WAIT),  # a live worker still computes it
        (JobStatus.CANCELLED, True, False, Overdue.WAIT),  # ... though it was cancelled
        (JobStatus.CANCELLED, False, False, Overdue.SETTLE),  # its worker died after the cancel
        (JobStatus.RUNNING, False, False, Overdue.SETTLE),  # nothing left to publish
        (None, False, False, Overdue.SETTLE),  # expired
    ],
)
def test_decide(status: JobStatus | None, held: bool, has_message: bool, action: Overdue) -> None:
    assert decide(status, held, has_message) is action


def test_a_job_its_worker_still_holds_is_not_published_again() -> None:
    """A slow job on a live worker passes its deadline: it gets a later one, no second copy
    (which would be computed twice and counted as a redelivery). Once its worker is gone, it is
    published again."""
    server = fakeredis.FakeServer()
    r = fakeredis.FakeRedis(server=server)
    store = JobStore(r, 60, redeliver_after_s=10)
    submit(server, "job_slow", created_at=0.0)
    store.start("job_slow", 1.0, "w1")
    published: list[str] = []
    sweeper = Redeliverer(store, lambda m, q: published.append(m.job_id), 5.0, "w2")
    assert sweeper.sweep(now=50.0) == 0
    assert published == []
    assert r.zscore(keys.PENDING_ZSET, "job_slow") == 60.0
    r.delete(keys.job_hold("job_slow"))  # w1 died: its hold lapsed
    r.delete(keys.SWEEP_LOCK)
    assert sweeper.sweep(now=61.0) == 1
    assert published == ["job_slow"]


def test_a_job_cancelled_while_its_worker_died_frees_its_quota() -> None:
    server = fakeredis.FakeServer()
    client = fakeredis.FakeRedis(server=server)
    store = JobStore(client, 60, redeliver_after_s=10)
    submit(server, "job_c", created_at=0.0, tenant="acme")
    store.start("job_c", 1.0, "w1")

    async def cancel() -> None:
        aclient = fakeredis.FakeAsyncRedis(server=server)
        assert (await AsyncJobStore(aclient, 60).cancel("job_c", 2.0)).applied
        await aclient.aclose()

    asyncio.run(cancel())
    sweeper = Redeliverer(store, lambda m, q: None, 5.0, "w2")
    sweeper.sweep(now=20.0)
    assert client.hget(keys.QUEUED_ITEMS, "acme") == b"1", "w1 may still compute it"
    client.delete(keys.job_hold("job_c"))  # w1 died before it noticed the cancel
    client.delete(keys.SWEEP_LOCK)
    assert sweeper.sweep(now=40.0) == 0
    assert client.hget(keys.QUEUED_ITEMS, "acme") == b"0"
    assert client.zscore(keys.PENDING_ZSET, "job_c") is None
