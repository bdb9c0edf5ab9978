"""A hash that is the same in every process (Python's `hash` is salted per process), for
rendezvous hashing in the gateway's router and the workers' shard preferences."""

from __future__ import annotations

import hashlib


def stable_hash(*parts: str) -> int:
    return int.from_bytes(hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest())
