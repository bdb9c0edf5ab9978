"""Worker liveness in Redis: workers write heartbeats, the gateway reads who is alive.

Each heartbeat is a key with a TTL of `LIVENESS_FACTOR` heartbeats (its expiry is a worker's
death certificate) plus a zset entry scored by time, so readers find live workers without SCAN.
A worker's holds on the jobs it works on (`keys.job_hold`) live just as long, renewed by the same
heartbeat, so a job's hold lapses when its worker dies.
"""

from __future__ import annotations

from collections.abc import Sequence

import redis
import redis.asyncio as aioredis

from common import keys
from common.schemas import WorkerInfo

LIVENESS_FACTOR = 3


def liveness_s(heartbeat_s: float) -> float:
    """How long a heartbeat (and a job hold) lives without renewal."""
    return heartbeat_s * LIVENESS_FACTOR


def write_heartbeat(client: redis.Redis, info: WorkerInfo, heartbeat_s: float) -> None:
    ttl_ms = int(liveness_s(heartbeat_s) * 1000)
    with client.pipeline(transaction=True) as pipe:
        pipe.set(keys.worker(info.id), info.model_dump_json(), px=ttl_ms)
        pipe.zadd(keys.WORKERS_ZSET, {info.id: info.seen_at})
        pipe.execute()


def redis_time(reply: tuple[int, int]) -> float:
    """Seconds from a Redis TIME reply (seconds, microseconds)."""
    seconds, micros = reply
    return seconds + micros / 1e6


def queued_jobs(client: redis.Redis, queues: Sequence[str]) -> tuple[int, float]:
    """Jobs waiting in `queues`, and when they were counted on the Redis clock, in one
    transaction: no job can be pushed or popped between the count and the time."""
    with client.pipeline(transaction=True) as pipe:
        pipe.time()
        for queue in queues:
            pipe.llen(keys.queue_list(queue))
        now, *lengths = pipe.execute()
    return sum(lengths), redis_time(now)


def remove_worker(client: redis.Redis, worker_id: str) -> None:
    with client.pipeline(transaction=True) as pipe:
        pipe.delete(keys.worker(worker_id))
        pipe.zrem(keys.WORKERS_ZSET, worker_id)
        pipe.execute()


def _alive(ids: list[str], records: list[bytes | str | None]) -> tuple[list[WorkerInfo], list[str]]:
    alive = [WorkerInfo.model_validate_json(r) for r in records if r is not None]
    dead = [i for i, r in zip(ids, records, strict=True) if r is None]
    return alive, dead


def _ids(raw: Sequence[object]) -> list[str]:
    return [i.decode() if isinstance(i, bytes) else str(i) for i in raw]


def live_worker_infos(client: redis.Redis) -> list[WorkerInfo]:
    ids = _ids(client.zrange(keys.WORKERS_ZSET, 0, -1))
    if not ids:
        return []
    alive, dead = _alive(ids, client.mget([keys.worker(i) for i in ids]))
    if dead:
        client.zrem(keys.WORKERS_ZSET, *dead)
    return alive


def live_worker_ids(client: redis.Redis, model_id: str) -> list[str]:
    return [w.id for w in live_worker_infos(client) if w.model == model_id]


async def live_workers(client: aioredis.Redis) -> list[WorkerInfo]:
    ids = _ids(await client.zrange(keys.WORKERS_ZSET, 0, -1))
    if not ids:
        return []
    alive, dead = _alive(ids, await client.mget([keys.worker(i) for i in ids]))
    if dead:
        await client.zrem(keys.WORKERS_ZSET, *dead)
    return alive
