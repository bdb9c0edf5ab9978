"""What the gateway holds for its lifetime, built in the app's lifespan from the settings."""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis

from api.auth import RateLimiter
from api.batches import BatchRecords
from api.checks import SubmitChecks
from api.cluster_view import ClusterView
from api.files import FileRecords
from api.idempotency import Idempotency
from api.publisher import Publisher
from api.waiter import CompletionWaiter
from common.job_store import AsyncJobStore
from common.object_store import ObjectStore
from common.settings import Settings


def connect_redis(settings: Settings) -> aioredis.Redis:
    """A bounded pool that makes a request wait for a free connection rather than fail: a burst
    of requests (hundreds of long polls re-reading their jobs at once) queues for a moment
    instead of getting 503s, and Redis never sees more than `redis_max_connections` of ours."""
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.redis_max_connections,
        timeout=settings.redis_pool_timeout_s,
    )
    return aioredis.Redis.from_pool(pool)


@dataclass
class Gateway:
    settings: Settings
    redis: aioredis.Redis
    store: AsyncJobStore
    publisher: Publisher
    waiter: CompletionWaiter
    cluster: ClusterView
    rate: RateLimiter
    idempotency: Idempotency
    checks: SubmitChecks
    objects: ObjectStore
    files: FileRecords
    batches: BatchRecords
