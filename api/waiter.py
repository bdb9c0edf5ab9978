"""Wait for jobs to finish without polling Redis per request.

One pub/sub subscription per gateway process hears every terminal transition (the job store's
Lua publishes the job id) and wakes that job's waiters. A waiter holds no Redis connection while
it waits: it takes one from the pool only to read its job. Each time the subscription is
(re)established every waiter re-reads its job, since what finished while it was down was not
heard; and a waiter re-reads every `recheck_s` anyway, so a lost notification costs at most
that much latency, never a hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Callable

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from api.background import cancel_and_wait
from common import keys
from common.job_store import AsyncJobStore
from common.schemas import StoredJob

log = logging.getLogger(__name__)


class CompletionWaiter:
    def __init__(self, client: aioredis.Redis, store: AsyncJobStore, recheck_s: float = 1.0):
        self._client = client
        self._store = store
        self._recheck_s = recheck_s
        self._waiters: defaultdict[str, set[asyncio.Event]] = defaultdict(set)
        #: Called with every finished job's id (the cluster view corrects loads with it).
        self.on_done: list[Callable[[str], None]] = []
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="loraq-completion-waiter")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    async def wait(
        self, job_id: str, timeout: float, tenant: str | None
    ) -> tuple[StoredJob | None, bytes | None]:
        """The job and its result (`AsyncJobStore.get_with_result`) once terminal, or as last
        read when `timeout` passes. A job that is gone, or not `tenant`'s, is answered at the
        first read: a caller never waits on a job it may not see, so waiting tells it nothing.
        The first read happens after this waiter is registered, so a job that finishes at once
        is never missed. A read that fails for want of a connection (a Redis failover) is tried
        again at the next recheck: the wait goes on across the failover, and fails (503) only
        if no read at all succeeded before `timeout`."""
        event = asyncio.Event()
        self._waiters[job_id].add(event)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        read: tuple[StoredJob | None, bytes | None] | None = None
        try:
            while True:
                try:
                    read = job, result = await self._store.get_with_result(job_id)
                except RedisConnectionError as exc:
                    if read is None and loop.time() >= deadline:
                        raise
                    log.warning("reading job %s failed (%s); waiting on", job_id, exc)
                else:
                    if job is None or job.tenant != tenant or job.status.terminal:
                        return job, result
                remaining = deadline - loop.time()
                if remaining <= 0 and read is not None:
                    return read
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), min(remaining, self._recheck_s))
                event.clear()
        finally:
            waiters = self._waiters.get(job_id)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    del self._waiters[job_id]

    def _wake(self, job_id: str) -> None:
        for event in self._waiters.get(job_id, ()):
            event.set()

    async def _listen(self) -> None:
        backoff = 0.1
        while True:
            try:
                async with self._client.pubsub() as pubsub:
                    await pubsub.subscribe(keys.JOB_DONE_CHANNEL)
                    backoff = 0.1
                    async for message in pubsub.listen():
                        if message["type"] == "subscribe":
                            for job_id in list(self._waiters):
                                self._wake(job_id)
                        elif message["type"] == "message":
                            job_id = message["data"].decode()
                            self._wake(job_id)
                            for callback in self.on_done:
                                callback(job_id)
            except RedisError as exc:
                log.warning("completion subscription lost (%s); retrying", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
