"""Every Redis client loraq opens, built from the settings in one place.

Either one Redis named by `redis_url`, or a primary found through Sentinel (`settings.sentinel`):
then each client asks the Sentinels for the primary when it connects, and again whenever a
connection breaks or the node it reaches answers as a replica (`READONLY`), so a failover needs
no restart anywhere. With Sentinel, `redis_url` still says how to talk to the data nodes (scheme,
`rediss` for TLS, username, password, database); its host and port are not used.

The Celery broker goes through kombu's `sentinel://` transport with the same addresses, master
name and credentials (`broker_url`, `broker_options`), so Celery messages, the job store and every
other key always live on the same primary.
"""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.asyncio.sentinel import SentinelConnectionPool as AsyncSentinelPool
from redis.sentinel import Sentinel

from common.settings import SentinelSettings, Settings

#: A node that does not answer a connect within this long counts as down: a client moves on (to
#: the next Sentinel, or fails the command so the gateway answers 503) instead of hanging.
CONNECT_TIMEOUT_S = 2.0


class _BlockingSentinelPool(AsyncSentinelPool, aioredis.BlockingConnectionPool):
    """The gateway's bounded pool (`BlockingConnectionPool`: wait for a free connection, never
    open more than `max_connections`) whose connections follow the Sentinels' primary."""


def data_node_kwargs(settings: Settings) -> dict[str, Any]:
    """How to talk to the primary, from `redis_url`, for a client that finds it via Sentinel."""
    url = urlsplit(settings.redis_url)
    path = url.path.strip("/")
    out: dict[str, Any] = {
        "db": int(path) if path else 0,
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
        "socket_keepalive": True,
    }
    if url.username:
        out["username"] = unquote(url.username)
    if url.password:
        out["password"] = unquote(url.password)
    if url.scheme == "rediss":
        out["ssl"] = True
    return out


def _sentinel_kwargs(sentinel: SentinelSettings) -> dict[str, Any]:
    out: dict[str, Any] = {"socket_connect_timeout": CONNECT_TIMEOUT_S, "socket_timeout": 5.0}
    if sentinel.password is not None:
        out["password"] = sentinel.password.get_secret_value()
    if sentinel.tls:
        out["ssl"] = True
    return out


def sync_client(settings: Settings, **kwargs: Any) -> redis.Redis:
    """A client of the primary (worker, webhook worker, CLI); `kwargs` go to its connections."""
    sentinel = settings.sentinel
    if not sentinel.addresses:
        return redis.Redis.from_url(settings.redis_url, **kwargs)
    manager = Sentinel(sentinel.hosts(), sentinel_kwargs=_sentinel_kwargs(sentinel))
    connection = {**data_node_kwargs(settings), **kwargs}
    client: redis.Redis = manager.master_for(
        sentinel.master_name, redis_class=redis.Redis, **connection
    )
    return client


def async_client(settings: Settings) -> aioredis.Redis:
    """The gateway's client: a bounded pool that makes a request wait for a free connection
    rather than fail, so a burst of requests (hundreds of long polls re-reading their jobs at
    once) queues for a moment instead of getting 503s, and Redis never sees more than
    `redis_max_connections` of ours."""
    bounds = {
        "max_connections": settings.redis_max_connections,
        "timeout": settings.redis_pool_timeout_s,
    }
    sentinel = settings.sentinel
    if not sentinel.addresses:
        pool = aioredis.BlockingConnectionPool.from_url(settings.redis_url, **bounds)
        return aioredis.Redis.from_pool(pool)
    manager = AsyncSentinel(sentinel.hosts(), sentinel_kwargs=_sentinel_kwargs(sentinel))
    client: aioredis.Redis = manager.master_for(
        sentinel.master_name,
        redis_class=aioredis.Redis,
        connection_pool_class=_BlockingSentinelPool,
        **data_node_kwargs(settings),
        **bounds,
    )
    return client


def broker_url(settings: Settings) -> str:
    """The Celery broker: `redis_url` itself, or every Sentinel as kombu spells them
    (`sentinel://[:password@]host:port;...`, the data nodes' credentials and database)."""
    sentinel = settings.sentinel
    if not sentinel.addresses:
        return settings.redis_url
    url = urlsplit(settings.redis_url)
    auth = url.netloc.rpartition("@")[0]
    db = url.path.strip("/") or "0"
    prefix = f"{auth}@" if auth else ""
    return ";".join(f"sentinel://{prefix}{host}:{port}/{db}" for host, port in sentinel.hosts())


def broker_options(settings: Settings) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """kombu transport options and `broker_use_ssl` that `broker_url` needs beside it."""
    sentinel = settings.sentinel
    if not sentinel.addresses:
        return {}, None
    options = {"master_name": sentinel.master_name, "sentinel_kwargs": _sentinel_kwargs(sentinel)}
    use_ssl = (
        {"ssl_cert_reqs": ssl.CERT_REQUIRED} if data_node_kwargs(settings).get("ssl") else None
    )
    return options, use_ssl
