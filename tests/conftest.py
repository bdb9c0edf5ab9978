"""Shared fixtures: a private redis-server per test session, markers by directory.

Tiers: `unit` (in-process, fakes; `make test-fast`), `slow` (in-process but costly: trains a
model, renders the chart, starts an interpreter; under tests/unit/ but not `unit`),
`integration` (a real redis-server; a gateway that needs no worker runs in process), `e2e`
(uvicorn, Celery workers, redis-server, as processes), `chaos` (e2e that kill workers or restart
Redis), `gpu`. `make test` runs them all."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from loraq.stack import start_redis

_MARKER_BY_DIR = {"unit": "unit", "integration": "integration", "e2e": "e2e", "gpu": "gpu"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        part = Path(str(item.path)).parent.name
        if part in _MARKER_BY_DIR and item.get_closest_marker("slow") is None:
            item.add_marker(_MARKER_BY_DIR[part])


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One redis-server for the session, on a free port, with its data in a temp dir."""
    proc, url = start_redis(tmp_path_factory.mktemp("redis"))
    yield url
    proc.stop()


@pytest.fixture
def redis_url(redis_server: str) -> str:
    """The session's Redis, emptied for this test."""
    redis.Redis.from_url(redis_server).flushall()
    return redis_server


@pytest.fixture(scope="module")
def module_redis_url(redis_server: str) -> str:
    """The session's Redis, emptied for a module whose tests share one gateway."""
    redis.Redis.from_url(redis_server).flushall()
    return redis_server


@pytest.fixture(scope="module")
def private_redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server of the module's own, for gateways that drive batches: every gateway's
    batch runner takes the open batches of its Redis, so a gateway with other settings on the
    shared server (the e2e session stack's) could take this module's."""
    proc, url = start_redis(tmp_path_factory.mktemp("private-redis"))
    yield url
    proc.stop()
