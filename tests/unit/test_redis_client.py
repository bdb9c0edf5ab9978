"""The worker's command packer (`worker/redis_client.py`): the same bytes on the wire as
redis-py's default, without copying a large value."""

from __future__ import annotations

import pytest
from redis.connection import HiredisRespSerializer

from worker.redis_client import LARGE_BYTES, PayloadPacker

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "args",
    [
        ("EVALSHA", "f" * 40, 2, "loraq:job:j", "loraq:result:j", '{"to": "succeeded"}', b"v" * 10),
        ("SET", "k", b"\x00\xff" * LARGE_BYTES, "EX", 60),
        ("HSET", "h", "name", "é unicode", "n", 3, "x", 1.5),
    ],
)
def test_the_wire_bytes_are_redis_pys_own(args: tuple[object, ...]) -> None:
    assert b"".join(PayloadPacker().pack(*args)) == b"".join(HiredisRespSerializer().pack(*args))


def test_a_large_value_is_sent_as_it_is() -> None:
    value = bytes(range(256)) * (LARGE_BYTES // 128)
    chunks = PayloadPacker().pack("SET", "k", value)
    assert any(chunk is value for chunk in chunks)
