"""The worker's Redis client: result vectors are sent as they are, not copied into a buffer.

redis-py packs commands with hiredis when it is installed: fastest for small commands, but it
copies every argument into one buffer, about 2 ms per MB, and a 256-item job's vectors are a MB
(the drain profile in `bench/control_plane.py` had it at a third of the worker's GIL time).
redis-py's own packer sends an argument over its buffer cutoff as a separate write, without a
copy; commands that carry one go through it, the rest through hiredis.
"""

from __future__ import annotations

from typing import Any

import redis
from redis._parsers.encoders import Encoder
from redis.connection import HiredisRespSerializer, PythonRespSerializer
from redis.utils import HIREDIS_AVAILABLE

from common.redis_connection import sync_client
from common.settings import Settings

#: Arguments longer than this go out as their own write (redis-py's default cutoff).
LARGE_BYTES = 6000


class PayloadPacker:
    def __init__(self) -> None:
        self._small = HiredisRespSerializer() if HIREDIS_AVAILABLE else None  # type: ignore[no-untyped-call]
        self._large = PythonRespSerializer(LARGE_BYTES, Encoder("utf-8", "strict", False).encode)  # type: ignore[no-untyped-call]

    def pack(self, *args: Any) -> list[bytes]:
        if self._small is None or any(
            isinstance(arg, bytes | memoryview) and len(arg) > LARGE_BYTES for arg in args
        ):
            return self._large.pack(*args)  # type: ignore[no-untyped-call,no-any-return]
        return self._small.pack(*args)  # type: ignore[no-any-return]


def connect(settings: Settings) -> redis.Redis:
    return sync_client(settings, command_packer=PayloadPacker())
