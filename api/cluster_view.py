"""The gateway's view of the workers: live workers per model and queue depths, refreshed in the
background from heartbeats, so routing and admission cost no Redis round trip per request."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from api.background import cancel_and_wait
from api.placement import Route, Router, WorkerView
from common import keys
from common.errors import QueueFull
from common.heartbeats import live_workers, redis_time
from common.metrics import QUEUE_DEPTH, QUEUE_OLDEST_AGE
from common.schemas import WorkerInfo
from common.settings import Settings

log = logging.getLogger(__name__)


def message_age(raw: bytes | None, now: float) -> float:
    """Seconds since a queued encode message was published (kombu envelope → Celery body)."""
    if raw is None:
        return 0.0
    try:
        envelope = json.loads(raw)
        args = json.loads(base64.b64decode(envelope["body"]))[0]
        return max(0.0, now - float(args[0]["enqueued_at"]))
    except (ValueError, KeyError, IndexError, TypeError):
        return 0.0


class ClusterView:
    def __init__(self, client: aioredis.Redis, settings: Settings) -> None:
        self._r = client
        self._settings = settings
        rs = settings.routing
        self._routers = {m: Router(m, rs.epsilon) for m in settings.models}
        self._queues = {
            m: [keys.model_queue(m), *(keys.shard_queue(m, s) for s in range(rs.shards))]
            for m in settings.models
        }
        self.depth = dict.fromkeys(settings.models, 0)
        self.workers: dict[str, list[WorkerInfo]] = {m: [] for m in settings.models}
        self.refreshed_at = 0.0
        self._admitted = dict.fromkeys(settings.models, 0)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        with contextlib.suppress(RedisError):
            await self.refresh()
        self._task = asyncio.create_task(self._run(), name="loraq-cluster-view")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    async def refresh(self) -> None:
        infos = await live_workers(self._r)
        async with self._r.pipeline(transaction=False) as pipe:
            pipe.time()
            for queues in self._queues.values():
                for queue in queues:
                    pipe.llen(keys.queue_list(queue))
                    pipe.lindex(keys.queue_list(queue), -1)  # the oldest (LPUSH, BRPOP)
            asked = time.time()
            replies = iter(await pipe.execute())
            answered = time.time()
        # Redis read its clock after we asked and before we had the answer: that bounds how far
        # its clock is ahead of ours, and so when, on our clock, each worker took its backlog.
        redis_now = redis_time(next(replies))
        ahead_min, ahead_max = redis_now - answered, redis_now - asked
        lengths = []
        for queues in self._queues.values():
            for queue in queues:
                depth, oldest = next(replies), next(replies)
                QUEUE_DEPTH.labels(queue).set(depth)
                QUEUE_OLDEST_AGE.labels(queue).set(message_age(oldest, time.time()))
                lengths.append(depth)
        lengths_iter = iter(lengths)
        self.refreshed_at = time.time()
        for model, router in self._routers.items():
            shared = keys.model_queue(model)
            self.workers[model] = [w for w in infos if w.model == model]
            router.update(
                [
                    WorkerView(
                        w.id,
                        tuple(q for q in w.queues if q != shared),
                        frozenset(w.warm_adapters),
                        w.backlog,
                        w.backlog_at - ahead_max,
                        w.backlog_at - ahead_min,
                    )
                    for w in self.workers[model]
                ]
            )
            self.depth[model] = sum(next(lengths_iter) for _ in self._queues[model])
            self._admitted[model] = 0

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._settings.routing.refresh_s)
            try:
                await self.refresh()
            except RedisError as exc:
                log.warning("routing refresh failed: %s", exc)

    def admit(self, model: str) -> None:
        """Backpressure: refuse new work while the model's queues are at their limit."""
        limit = self._settings.limits.max_queued_jobs
        if self.depth[model] + self._admitted[model] >= limit:
            raise QueueFull(
                f"{self.depth[model]} jobs are queued for {model!r} (limit {limit}); retry later",
                retry_after=max(1, round(2 * self._settings.routing.refresh_s)),
            )
        self._admitted[model] += 1

    def route(self, model: str, lora_id: str | None, job_id: str) -> Route:
        return self._routers[model].route(lora_id, job_id)

    def affinity_queue(self, model: str, lora_id: str) -> str:
        return self._routers[model].affinity_queue(lora_id)

    def published(self, model: str, job_id: str) -> None:
        self._routers[model].published(job_id)

    def loads(self, model: str) -> dict[str, int]:
        """Per live worker, the load the router decides on."""
        return self._routers[model].loads()

    def completed(self, job_id: str) -> None:
        for router in self._routers.values():
            router.complete(job_id)
