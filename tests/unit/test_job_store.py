"""The job store's compare-and-set state machine (common/job_store.py) on fakeredis with Lua."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import fakeredis
import pytest

from common import keys
from common.job_store import AsyncJobStore, JobStore, Transition, decode_job, encode_job
from common.schemas import JobStatus, StoredJob

pytestmark = pytest.mark.unit

TTL = 600


def _job(job_id: str = "job_1", **fields: object) -> StoredJob:
    data: dict[str, object] = {
        "id": job_id,
        "status": JobStatus.QUEUED,
        "model": "m/1",
        "n_items": 2,
        "created_at": 1_700_000_000.25,
    }
    data.update(fields)
    return StoredJob.model_validate(data)


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


@pytest.fixture
def client(server: fakeredis.FakeServer) -> Iterator[fakeredis.FakeRedis]:
    r = fakeredis.FakeRedis(server=server)
    yield r
    r.close()


@pytest.fixture
def store(client: fakeredis.FakeRedis) -> JobStore:
    return JobStore(client, TTL)


def _create(client: fakeredis.FakeRedis, job: StoredJob) -> None:
    """What `AsyncJobStore.create` writes, done synchronously."""
    client.hset(keys.job(job.id), mapping=encode_job(job))
    client.expire(keys.job(job.id), TTL)


def test_create_start_succeed(store: JobStore, client: fakeredis.FakeRedis) -> None:
    _create(client, _job())
    started = store.start("job_1", 10.0)
    assert started == Transition(applied=True, previous=JobStatus.QUEUED, attempts=1)
    running = store.get("job_1")
    assert running is not None
    assert running.status is JobStatus.RUNNING
    assert running.started_at == 10.0
    assert running.attempts == 1

    done = store.succeed(
        "job_1", 11.5, b"\x00\x01\x02\x03", {"dims": 4, "inference_ms": 1.25, "adapter_hash": None}
    )
    assert done == Transition(applied=True, previous=JobStatus.RUNNING, attempts=1)
    job = store.get("job_1")
    assert job is not None
    assert job.status is JobStatus.SUCCEEDED
    assert (job.finished_at, job.dims, job.inference_ms) == (11.5, 4, 1.25)
    assert job.adapter_hash is None  # a None field is not written
    assert job.error_code is None
    assert client.get(keys.job_result("job_1")) == b"\x00\x01\x02\x03"


def test_result_bytes_are_stored_verbatim(store: JobStore, client: fakeredis.FakeRedis) -> None:
    _create(client, _job())
    store.start("job_1", 1.0)
    payload = bytes(range(256)) * 3  # every byte value, NULs included
    assert store.succeed("job_1", 2.0, payload, {}).applied
    assert client.get(keys.job_result("job_1")) == payload


def test_terminal_transition_sets_ttl_on_both_keys(
    store: JobStore, client: fakeredis.FakeRedis
) -> None:
    _create(client, _job())
    client.persist(keys.job("job_1"))
    store.start("job_1", 1.0)
    assert 0 < client.ttl(keys.job("job_1")) <= TTL  # start refreshes the record's TTL too
    client.persist(keys.job("job_1"))
    store.succeed("job_1", 2.0, b"vec", {})
    assert TTL - 5 <= client.ttl(keys.job("job_1")) <= TTL
    assert TTL - 5 <= client.ttl(keys.job_result("job_1")) <= TTL


def test_succeed_twice_keeps_first_result(store: JobStore, client: fakeredis.FakeRedis) -> None:
    _create(client, _job())
    store.start("job_1", 1.0)
    assert store.succeed("job_1", 2.0, b"first", {"dims": 1}).applied
    second = store.succeed("job_1", 3.0, b"second", {"dims": 2})
    assert second == Transition(applied=False, previous=JobStatus.SUCCEEDED, attempts=1)
    job = store.get("job_1")
    assert job is not None
    assert (job.status, job.finished_at, job.dims) == (JobStatus.SUCCEEDED, 2.0, 1)
    assert client.get(keys.job_result("job_1")) == b"first"


def test_fail_after_succeed_is_refused(store: JobStore, client: fakeredis.FakeRedis) -> None:
    _create(client, _job())
    store.start("job_1", 1.0)
    store.succeed("job_1", 2.0, b"ok", {})
    late = store.fail("job_1", 3.0, "WORKER_ERROR", "lost lease")
    assert late == Transition(applied=False, previous=JobStatus.SUCCEEDED, attempts=1)
    job = store.get("job_1")
    assert job is not None
    assert job.status is JobStatus.SUCCEEDED
    assert job.error_code is None and job.error_message is None
    assert client.get(keys.job_result("job_1")) == b"ok"


def test_start_after_succeed_is_refused(store: JobStore, client: fakeredis.FakeRedis) -> None:
    _create(client, _job())
    store.start("job_1", 1.0)
    store.succeed("job_1", 2.0, b"ok", {})
    redelivered = store.start("job_1", 5.0)
    assert redelivered == Transition(applied=False, previous=JobStatus.SUCCEEDED, attempts=1)
    job = store.get("job_1")
    assert job is not None
    assert (job.status, job.started_at, job.attempts) == (JobStatus.SUCCEEDED, 1.0, 1)


def test_start_after_fail_is_refused(store: JobStore, client: fakeredis.FakeRedis) -> None:
    _create(client, _job())
    store.fail("job_1", 1.0, "ENCODE_FAILED", "boom")
    again = store.start("job_1", 2.0)
    assert again == Transition(applied=False, previous=JobStatus.FAILED, attempts=0)
    assert not store.succeed("job_1", 3.0, b"x", {}).applied
    job = store.get("job_1")
    assert job is not None
    assert job.status is JobStatus.FAILED
    assert client.exists(keys.job_result("job_1")) == 0


def test_start_on_running_counts_a_redelivery_only_once_the_holder_is_gone(
    store: JobStore, client: fakeredis.FakeRedis
) -> None:
    """A second message while the first delivery's worker holds the job (the broker's
    visibility timeout, the sweeper) is a duplicate: refused, counting nothing. Once that hold
    lapses (its worker died) or its worker lets go, the next start is a redelivery and counts."""
    _create(client, _job())
    assert store.start("job_1", 1.0, "w1").attempts == 1
    assert client.get(keys.job_hold("job_1")) == b"w1"
    for _ in range(5):
        duplicate = store.start("job_1", 2.0, "w2")
        assert duplicate == Transition(applied=False, previous=JobStatus.RUNNING, attempts=1)
    client.delete(keys.job_hold("job_1"))  # what expiry does when w1 stops renewing it
    again = store.start("job_1", 3.0, "w2")
    assert again == Transition(applied=True, previous=JobStatus.RUNNING, attempts=2)
    assert not store.let_go("job_1", "w1"), "a former holder's let-go changes nothing"
    assert store.start("job_1", 3.5, "w3").applied is False
    store.let_go("job_1", "w2")  # w2 gives up without an outcome (Redis errors)
    third = store.start("job_1", 4.0, "w3")
    assert third.attempts == 3
    job = store.get("job_1")
    assert job is not None
    assert (job.status, job.attempts, job.started_at, job.worker) == (
        JobStatus.RUNNING, 3, 4.0, "w3",
    )  # fmt: skip
    store.succeed("job_1", 5.0, b"v", {})
    assert client.exists(keys.job_hold("job_1")) == 0, "the outcome ends the hold"


def test_holds_live_a_heartbeat_ttl_renewed_only_by_their_holder(
    client: fakeredis.FakeRedis,
) -> None:
    store = JobStore(client, TTL, hold_ttl_s=2.0)
    _create(client, _job())
    store.start("job_1", 1.0, "w1")
    hold = keys.job_hold("job_1")
    assert 0 < client.pttl(hold) <= 2000
    client.pexpire(hold, 100)
    store.renew_holds(["job_1"], "w2")
    assert client.pttl(hold) <= 100, "another worker cannot keep w1's hold alive"
    store.renew_holds(["job_1", "job_gone"], "w1")
    assert 1000 < client.pttl(hold) <= 2000
    assert client.exists(keys.job_hold("job_gone")) == 0


def _held_job_with_quota(client: fakeredis.FakeRedis, store: JobStore) -> None:
    """job_1 of tenant acme: 5 items and one job counted against its quotas, started by w1."""
    _create(client, _job(tenant="acme", n_items=5, quota_items=5, quota_job="acme/m-1"))
    client.hset(keys.QUEUED_ITEMS, "acme", 5)
    client.hset(keys.QUEUED_JOBS, "acme/m-1", 1)
    store.start("job_1", 1.0, "w1")


def _cancel(server: fakeredis.FakeServer, job_id: str) -> Transition:
    async def cancel() -> Transition:
        aclient = fakeredis.FakeAsyncRedis(server=server)
        try:
            return await AsyncJobStore(aclient, TTL).cancel(job_id, 2.0)
        finally:
            await aclient.aclose()

    return asyncio.run(cancel())


def _quota(client: fakeredis.FakeRedis) -> tuple[int, int]:
    items, jobs = client.hget(keys.QUEUED_ITEMS, "acme"), client.hget(keys.QUEUED_JOBS, "acme/m-1")
    return int(items or 0), int(jobs or 0)


def test_cancelled_running_job_counts_against_its_quota_until_its_holder_stops(
    server: fakeredis.FakeServer, store: JobStore, client: fakeredis.FakeRedis
) -> None:
    _held_job_with_quota(client, store)
    assert _cancel(server, "job_1").applied
    assert _quota(client) == (5, 1), "w1 still computes it"
    assert client.zscore(keys.PENDING_ZSET, "job_1") is not None, "the sweeper's backstop"
    assert store.start("job_1", 3.0, "w2").applied is False
    assert not store.let_go("job_1", "w2"), "only its holder stops computing it"
    assert _quota(client) == (5, 1)
    assert store.let_go("job_1", "w1")
    assert _quota(client) == (0, 0)
    assert client.zscore(keys.PENDING_ZSET, "job_1") is None
    assert client.exists(keys.job_hold("job_1")) == 0
    store.let_go("job_1", "w1")
    assert _quota(client) == (0, 0), "freed once"


@pytest.mark.parametrize("started", [False, True])
def test_cancel_frees_the_quota_at_once_when_nobody_computes_it(
    server: fakeredis.FakeServer, store: JobStore, client: fakeredis.FakeRedis, started: bool
) -> None:
    """Queued (never held), or running with its holder gone: nothing computes it any more."""
    _create(client, _job(tenant="acme", n_items=5, quota_items=5, quota_job="acme/m-1"))
    client.hset(keys.QUEUED_ITEMS, "acme", 5)
    client.hset(keys.QUEUED_JOBS, "acme/m-1", 1)
    if started:
        store.start("job_1", 1.0, "w1")
        client.delete(keys.job_hold("job_1"))  # w1 died: its hold lapsed
    assert _cancel(server, "job_1").applied
    assert _quota(client) == (0, 0)


def test_succeed_from_queued_is_refused(store: JobStore, client: fakeredis.FakeRedis) -> None:
    _create(client, _job())
    result = store.succeed("job_1", 1.0, b"x", {})
    assert result == Transition(applied=False, previous=JobStatus.QUEUED, attempts=0)
    assert client.exists(keys.job_result("job_1")) == 0


def test_fail_from_queued(store: JobStore, client: fakeredis.FakeRedis) -> None:
    _create(client, _job())
    result = store.fail("job_1", 4.0, "QUEUE_UNAVAILABLE", "broker down")
    assert result == Transition(applied=True, previous=JobStatus.QUEUED, attempts=0)
    job = store.get("job_1")
    assert job is not None
    assert job.status is JobStatus.FAILED
    assert (job.error_code, job.error_message, job.finished_at) == (
        "QUEUE_UNAVAILABLE",
        "broker down",
        4.0,
    )
    assert job.started_at is None
    assert client.exists(keys.job_result("job_1")) == 0


def test_missing_job_is_not_applied(store: JobStore, client: fakeredis.FakeRedis) -> None:
    missing = Transition(applied=False, previous=None, attempts=0)
    assert store.start("ghost", 1.0) == missing
    assert store.succeed("ghost", 1.0, b"x", {}) == missing
    assert store.fail("ghost", 1.0, "X", "y") == missing
    assert store.get("ghost") is None
    assert client.keys("*") == []  # nothing was created for the ghost


def _messages(pubsub: fakeredis.client.PubSub, timeout: float) -> list[bytes]:
    out = []
    while (msg := pubsub.get_message(ignore_subscribe_messages=True, timeout=timeout)) is not None:
        out.append(msg["data"])
    return out


def test_terminal_transitions_publish_job_id(store: JobStore, client: fakeredis.FakeRedis) -> None:
    pubsub = client.pubsub()
    pubsub.subscribe(keys.JOB_DONE_CHANNEL)
    assert pubsub.get_message(timeout=1.0)["type"] == "subscribe"
    _create(client, _job("job_a"))
    _create(client, _job("job_b"))

    store.start("job_a", 1.0)
    assert _messages(pubsub, 0.05) == []  # start is not terminal: no event

    store.succeed("job_a", 2.0, b"x", {})
    store.fail("job_b", 2.0, "E", "m")
    store.succeed("job_a", 3.0, b"y", {})  # refused: no second event
    assert _messages(pubsub, 0.2) == [b"job_a", b"job_b"]
    pubsub.close()


def test_async_store_create_get_cancel(server: fakeredis.FakeServer) -> None:
    async def scenario() -> None:
        aclient = fakeredis.FakeAsyncRedis(server=server)
        astore = AsyncJobStore(aclient, TTL)
        job = _job("job_async", lora_id="org/name", item_ids=["a", None, "c"], n_items=3)
        await astore.create(job, b"{}", "q")
        assert await astore.get("job_async") == job
        assert 0 < await aclient.ttl(keys.job("job_async")) <= TTL
        assert await astore.get("nope") is None
        assert await astore.get_with_result("job_async") == (job, None)

        cancelled = await astore.cancel("job_async", 9.0)
        assert cancelled == Transition(applied=True, previous=JobStatus.QUEUED, attempts=0)
        again = await astore.cancel("job_async", 10.0)
        assert again == Transition(applied=False, previous=JobStatus.CANCELLED, attempts=0)
        stored = await astore.get("job_async")
        assert stored is not None
        assert (stored.status, stored.finished_at) == (JobStatus.CANCELLED, 9.0)
        assert await astore.cancel("ghost", 1.0) == Transition(False, None, 0)
        await aclient.aclose()

    asyncio.run(scenario())


def test_async_create_then_worker_succeeds(server: fakeredis.FakeServer, store: JobStore) -> None:
    """The gateway's record is what the worker's blocking store transitions."""

    async def create_and_read() -> tuple[StoredJob | None, bytes | None]:
        aclient = fakeredis.FakeAsyncRedis(server=server)
        astore = AsyncJobStore(aclient, TTL)
        await astore.create(_job("job_x"), b"{}", "q")
        store.start("job_x", 1.0)
        store.succeed("job_x", 2.0, b"\x00vectors\xff", {"dims": 2})
        out = await astore.get_with_result("job_x")
        await aclient.aclose()
        return out

    job, result = asyncio.run(create_and_read())
    assert job is not None
    assert job.status is JobStatus.SUCCEEDED
    assert result == b"\x00vectors\xff"


@pytest.mark.parametrize(
    "job",
    [
        _job(),
        _job(item_ids=[None, "b"], lora_id="org/name"),
        _job(item_ids=[None, None]),
        _job(
            status=JobStatus.FAILED,
            item_ids=["a", "b"],
            started_at=1_700_000_001.123456789,
            finished_at=1_700_000_002.000001,
            error_code="ENCODE_FAILED",
            error_message='quotes " and \\ and unicode é',
            inference_ms=0.1 + 0.2,
            adapter_hash="0123456789abcdef",
            dims=384,
            attempts=3,
        ),
    ],
)
def test_encode_decode_round_trip(job: StoredJob) -> None:
    fields = encode_job(job)
    assert all(isinstance(v, str) for v in fields.values())
    assert "lora_id" in fields or job.lora_id is None  # None fields are left out
    assert decode_job(fields) == job
    as_bytes = {k.encode(): v.encode() for k, v in fields.items()}  # what hgetall returns
    assert decode_job(as_bytes) == job


def test_round_trip_through_redis(store: JobStore, client: fakeredis.FakeRedis) -> None:
    job = _job(item_ids=["x", None], lora_id="a/b")
    _create(client, job)
    assert store.get("job_1") == job


def test_pending_deadlines_follow_the_job(
    server: fakeredis.FakeServer, client: fakeredis.FakeRedis, store: JobStore
) -> None:
    """Submit puts the job and a copy of its message under a redelivery deadline; each start
    moves the deadline; the terminal write removes both."""

    async def create() -> None:
        aclient = fakeredis.FakeAsyncRedis(server=server)
        await AsyncJobStore(aclient, TTL, redeliver_after_s=30).create(_job("job_p"), b"msg", "q")
        await aclient.aclose()

    asyncio.run(create())
    created = _job("job_p").created_at
    assert client.zscore(keys.PENDING_ZSET, "job_p") == created + 30
    assert client.get(keys.job_message("job_p")) == b"msg"
    assert store.overdue(created + 29, 10) == []
    assert store.overdue(created + 31, 10) == ["job_p"]
    store.start("job_p", 100.0)
    assert client.zscore(keys.PENDING_ZSET, "job_p") == 100.0 + store.redeliver_after_s
    store.reschedule("job_p", 500.0)
    assert store.overdue(499.0, 10) == []
    store.succeed("job_p", 101.0, b"v", {})
    assert client.zscore(keys.PENDING_ZSET, "job_p") is None
    assert client.get(keys.job_message("job_p")) is None


def test_create_leaves_an_existing_job_alone_and_bulk_goes_to_its_own_list(
    server: fakeredis.FakeServer, client: fakeredis.FakeRedis, store: JobStore
) -> None:
    """A batch resuming after a gateway restart submits its chunks again under the same ids:
    the second create changes nothing (no second message, no second quota reservation).
    A chunk's message goes to the queue's lowest-priority list, with that priority inside."""

    async def create_twice() -> None:
        aclient = fakeredis.FakeAsyncRedis(server=server)
        astore = AsyncJobStore(aclient, TTL)
        job = _job("job_chunk", tenant="acme")
        assert await astore.create(job, b"{}", "q", 100, None, keys.BULK_PRIORITY) is None
        store.start("job_chunk", 5.0)
        assert await astore.create(job, b"{}", "q", 100, None, keys.BULK_PRIORITY) is None
        await aclient.aclose()

    asyncio.run(create_twice())
    running = store.get("job_chunk")
    assert running is not None and running.status is JobStatus.RUNNING
    assert client.llen(keys.queue_list("q")) == 0
    assert client.llen(keys.queue_list("q", keys.BULK_PRIORITY)) == 1
    assert client.hget(keys.QUEUED_ITEMS, "acme") == b"2"
    entry = json.loads(client.lindex(keys.queue_list("q", keys.BULK_PRIORITY), 0))
    assert entry["properties"]["priority"] == keys.BULK_PRIORITY
    assert keys.queue_list("q", keys.BULK_PRIORITY) == "loraq:celery:q\x06\x169"
