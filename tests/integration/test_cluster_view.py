"""The gateway's cluster view on a real Redis (`api/cluster_view.py`): which of its own
placements a worker's heartbeat already counts, decided on one clock for every host (Redis's),
and the heartbeat's queue count taken atomically with that clock
(`common.heartbeats.queued_jobs`)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import redis
import redis.asyncio as aioredis

from api.cluster_view import ClusterView
from common import keys
from common.heartbeats import queued_jobs, redis_time, write_heartbeat
from common.schemas import WorkerInfo
from common.settings import Settings
from tests.constants import FAKE_MODEL


def settings(redis_url: str, tmp_path: Path) -> Settings:
    return Settings(
        redis_url=redis_url,
        models={FAKE_MODEL: str(tmp_path)},
        routing={"shards": 2},
        auth={"mode": "disabled"},
    )


def heartbeat(r: redis.Redis, backlog: int, backlog_at: float) -> None:
    now = time.time()
    queues = [keys.shard_queue(FAKE_MODEL, 0), keys.shard_queue(FAKE_MODEL, 1)]
    info = WorkerInfo(
        id="w0", model=FAKE_MODEL, queues=queues, backlog=backlog, backlog_at=backlog_at,
        started_at=now, seen_at=now,
    )  # fmt: skip
    write_heartbeat(r, info, heartbeat_s=5)


def test_queued_jobs_counts_every_queue_on_the_redis_clock(redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url)
    queues = [keys.shard_queue(FAKE_MODEL, 0), keys.shard_queue(FAKE_MODEL, 1)]
    r.lpush(keys.queue_list(queues[0]), "m1", "m2")
    r.lpush(keys.queue_list(queues[1]), "m3")
    before = redis_time(r.time())
    count, at = queued_jobs(r, queues)
    assert count == 3
    assert before <= at <= redis_time(r.time())


def test_a_heartbeat_counts_the_placements_published_before_it_was_taken(
    redis_url: str, tmp_path: Path
) -> None:
    r = redis.Redis.from_url(redis_url)

    async def scenario() -> list[int]:
        client = aioredis.Redis.from_url(redis_url)
        table = ClusterView(client, settings(redis_url, tmp_path))
        heartbeat(r, backlog=0, backlog_at=redis_time(r.time()))
        await table.refresh()
        table.route(FAKE_MODEL, "x", "j1")
        table.published(FAKE_MODEL, "j1")
        loads = [table.loads(FAKE_MODEL)["w0"]]  # on top of the heartbeat: 0 + 1
        heartbeat(r, backlog=0, backlog_at=redis_time(r.time()) - 60)  # taken before j1
        await table.refresh()
        loads.append(table.loads(FAKE_MODEL)["w0"])  # still 0 + 1
        heartbeat(r, backlog=1, backlog_at=redis_time(r.time()))  # taken after: it counts j1
        await table.refresh()
        loads.append(table.loads(FAKE_MODEL)["w0"])  # 1, not 1 + 1
        await client.aclose()
        return loads

    assert asyncio.run(scenario()) == [1, 1, 1]
