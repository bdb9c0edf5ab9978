"""The Redis retry policy of the worker's task threads, kept free of torch.

`worker.tasks` turns `RetryLater` into a requeue, and the webhook worker (which has no model and
no torch) loads `worker.tasks` through the shared consumer app; so the policy lives here, not in
the job runner, which pulls in the engine.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import redis

log = logging.getLogger(__name__)

T = TypeVar("T")


class RetryLater(Exception):
    """Leave the message unacked; the broker will deliver it again."""


def with_redis_retries(fn: Callable[[], T], attempts: int = 5, first_delay: float = 0.2) -> T:
    """Ride out a short Redis outage (a restart, a failover) before giving up on this delivery."""
    delay = first_delay
    for attempt in range(attempts):
        try:
            return fn()
        except redis.RedisError as exc:
            if attempt == attempts - 1:
                raise RetryLater(f"redis unavailable: {exc}") from exc
            log.warning("redis error (%s); retrying in %.1fs", exc, delay)
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")
