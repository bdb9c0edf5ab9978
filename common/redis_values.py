"""What loraq's Redis code shares beside key names: replies as text (redis-py answers bytes or
str depending on how a client was made), and keys a holder owns (a shard lease, a job's hold, a
batch's driver lease), renewed or released only by the holder that still has them."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

# KEYS: the key. ARGV: holder, TTL in ms.
RENEW_IF_HOLDER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
# KEYS: the key. ARGV: holder.
RELEASE_IF_HOLDER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def texts(values: Iterable[Any]) -> list[str]:
    """Members of a list or set reply (typed loosely by redis-py)."""
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]
