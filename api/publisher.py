"""Webhook delivery requests and adapter prefetch hints to the Celery broker from async code, on
threads of its own.

(Encode jobs are queued by the job store itself, in the Lua call that records them.) Celery's
publish blocks, so it runs off the event loop. Not on the shared worker-thread pool:
Celery keeps its (disabled) result backend per thread and builds it by scanning every installed
package's entry points, about 10 ms, so each fresh pool thread made a submit that much slower.
A few long-lived threads pay that once, and bound how many publishes run at once.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from celery import Celery

from common.broker import publish_prefetch, publish_webhook

THREADS = 4


class Publisher:
    def __init__(self, celery: Celery, threads: int = THREADS) -> None:
        self._celery = celery
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="loraq-publish")

    async def webhook(self, job_id: str) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._pool, publish_webhook, self._celery, job_id)

    async def prefetch(self, lora_id: str, queue: str) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._pool, publish_prefetch, self._celery, lora_id, queue)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._celery.close()
