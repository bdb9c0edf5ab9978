"""The gateway's and workers' Redis clients against a real primary, replica and three Sentinels
(`loraq.stack.start_sentinel_redis`): they find the primary, follow it to the promoted replica
after a failover, and a submit with replica acks is accepted only while a replica holds it."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.exceptions import ConnectionError as RedisConnectionError

from api.waiter import CompletionWaiter
from common import keys
from common.broker import make_celery, publish_webhook
from common.errors import QueueUnavailable
from common.job_store import AsyncJobStore
from common.redis_connection import async_client, sync_client
from common.schemas import JobStatus, StoredJob
from common.settings import SentinelSettings, Settings
from loraq.stack import SentinelRedis, start_sentinel_redis, wait_until


@pytest.fixture
def group(tmp_path: Path) -> Iterator[SentinelRedis]:
    running = start_sentinel_redis(tmp_path)
    yield running
    running.stop()


def settings_for(group: SentinelRedis, **fields: object) -> Settings:
    addresses = [f"127.0.0.1:{port}" for port in group.sentinels]
    return Settings(
        redis_url="redis://127.0.0.1/0",
        sentinel=SentinelSettings(addresses=addresses, master_name=group.master_name),
        **fields,
    )


def job(job_id: str) -> StoredJob:
    return StoredJob(
        id=job_id, status=JobStatus.QUEUED, model="m/1", n_items=1, created_at=time.time()
    )


def test_clients_follow_the_primary_through_a_failover(group: SentinelRedis) -> None:
    settings = settings_for(group)
    client = sync_client(settings)
    with client.pipeline(transaction=False) as pipe:  # WAIT counts its own connection's writes
        pipe.set("before", "1")
        pipe.execute_command("WAIT", 1, 5000)
        assert pipe.execute() == [True, 1]
    old = group.primary_port()
    assert old is not None
    group.nodes[old].popen.send_signal(signal.SIGKILL)
    wait_until(lambda: group.primary_port() not in (None, old), 30, "Sentinel to promote")

    def writes() -> bool:
        try:
            return bool(client.set("after", "1"))
        except RedisConnectionError:
            return False

    wait_until(writes, 30, "a write to the new primary", interval=0.2)
    assert client.get("before") == b"1", "the replica had acked the write before the kill"


def test_a_submit_is_accepted_only_once_a_replica_holds_it(group: SentinelRedis) -> None:
    settings = settings_for(group, redis_replica_acks=1, redis_replica_ack_timeout_ms=300)

    async def create(job_id: str) -> None:
        client = async_client(settings)
        try:
            store = AsyncJobStore(
                client, 60, replica_acks=1, ack_timeout_ms=settings.redis_replica_ack_timeout_ms
            )
            assert await store.create(job(job_id), b"{}", "q") is None
        finally:
            await client.aclose()

    asyncio.run(create("job_acked"))
    replica = next(port for port in group.nodes if port != group.primary_port())
    group.nodes[replica].stop()
    with pytest.raises(QueueUnavailable, match="0 of 1 Redis replicas"):
        asyncio.run(create("job_unacked"))
    assert sync_client(settings).exists(keys.job("job_acked"))


def test_a_long_poll_waits_across_a_failover(
    group: SentinelRedis, caplog: pytest.LogCaptureFixture
) -> None:
    """A waiter whose reads fail while the Sentinels fail over keeps waiting, and answers the
    job's outcome written on the new primary."""
    settings = settings_for(group, redis_replica_acks=1)
    old = group.primary_port()

    def promoted() -> bool:
        return group.primary_port() not in (None, old)

    async def scenario() -> StoredJob | None:
        client = async_client(settings)
        store = AsyncJobStore(client, 60, replica_acks=1)
        waiter = CompletionWaiter(client, store, recheck_s=0.2)
        await waiter.start()
        try:
            await store.create(job("job_w"), b"{}", "q")
            waiting = asyncio.create_task(waiter.wait("job_w", 60, None))
            assert old is not None
            group.nodes[old].popen.send_signal(signal.SIGKILL)
            await asyncio.to_thread(wait_until, promoted, 30, "Sentinel to promote")
            assert not waiting.done(), "the wait goes on across the failover"
            assert (await store.cancel("job_w", time.time())).applied
            done, _ = await asyncio.wait_for(waiting, 30)
            return done
        finally:
            await waiter.stop()
            await client.aclose()

    with caplog.at_level(logging.WARNING, logger="api.waiter"):
        done = asyncio.run(scenario())
    assert done is not None and done.status == JobStatus.CANCELLED
    assert any("waiting on" in r.getMessage() for r in caplog.records), "no read failed"


def test_celery_publishes_to_the_primary_the_sentinels_name(group: SentinelRedis) -> None:
    """kombu's `sentinel://` transport, with our key prefix: the message lands where the
    workers (and KEDA) look for it, on the primary."""
    settings = settings_for(group)
    app = make_celery(settings)
    try:
        publish_webhook(app, "job_hook")
    finally:
        app.close()
    primary = redis.Redis(port=group.primary_port() or 0)
    entries = primary.lrange(keys.queue_list(keys.WEBHOOK_QUEUE), 0, -1)
    assert [json.loads(e)["headers"]["argsrepr"] for e in entries] == ["['job_hook']"]


def test_the_gateway_pool_is_bounded_with_sentinel_too(group: SentinelRedis) -> None:
    settings = settings_for(group, redis_max_connections=2, redis_pool_timeout_s=0.2)

    async def three_blocked_at_once() -> list[object]:
        client = async_client(settings)
        try:
            calls = [client.blpop(["nothing"], timeout=1) for _ in range(3)]
            return await asyncio.gather(*calls, return_exceptions=True)
        finally:
            await client.aclose()

    results = asyncio.run(three_blocked_at_once())
    assert sum(isinstance(r, Exception) for r in results) == 1, results
