"""What the gateway holds for its lifetime, built in the app's lifespan from the settings."""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis

from api.adapters import AdapterRegistry
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
    adapters: AdapterRegistry
