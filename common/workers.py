"""Worker liveness in Redis: workers write heartbeats, the gateway reads who is alive.

Each heartbeat is a key with a TTL of `LIVENESS_FACTOR` heartbeats (its expiry is a worker's
death certificate) plus a zset entry scored by time, so readers find live workers without SCAN.
"""

from __future__ import annotations

import redis
import redis.asyncio as aioredis

from common import keys
from common.schemas import WorkerInfo

LIVENESS_FACTOR = 3


def write_heartbeat(client: redis.Redis, info: WorkerInfo, heartbeat_s: float) -> None:
    ttl_ms = int(heartbeat_s * LIVENESS_FACTOR * 1000)
    with client.pipeline(transaction=True) as pipe:
        pipe.set(keys.worker(info.id), info.model_dump_json(), px=ttl_ms)
        pipe.zadd(keys.WORKERS_ZSET, {info.id: info.seen_at})
        pipe.execute()


def remove_worker(client: redis.Redis, worker_id: str) -> None:
    with client.pipeline(transaction=True) as pipe:
        pipe.delete(keys.worker(worker_id))
        pipe.zrem(keys.WORKERS_ZSET, worker_id)
        pipe.execute()


async def live_workers(client: aioredis.Redis) -> list[WorkerInfo]:
    ids = [
        i.decode() if isinstance(i, bytes) else str(i)
        for i in await client.zrange(keys.WORKERS_ZSET, 0, -1)
    ]
    if not ids:
        return []
    records = await client.mget([keys.worker(i) for i in ids])
    dead = [i for i, r in zip(ids, records, strict=True) if r is None]
    if dead:
        await client.zrem(keys.WORKERS_ZSET, *dead)
    return [WorkerInfo.model_validate_json(r) for r in records if r is not None]
