"""Schemathesis extensions for the fuzz test (`SCHEMATHESIS_HOOKS`): msgpack bodies both ways.

The gateway takes msgpack bodies and answers the SIE encode route in msgpack (vectors as
msgpack-numpy arrays), so the fuzzer sends msgpack too and reads those answers back as the
plain values the document describes.
"""

from __future__ import annotations

from typing import Any

import msgpack
import msgpack_numpy
import numpy as np
import schemathesis

#: msgpack's integers are 64-bit; the fuzzer's larger ones go as floats (still not valid).
_INT_RANGE = range(-(2**63), 2**64)


def packable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: packable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [packable(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool) and value not in _INT_RANGE:
        return float(value)
    return value


def plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


@schemathesis.serializer("application/msgpack")
def to_msgpack(_: schemathesis.SerializationContext, value: Any) -> bytes:
    packed: bytes = msgpack.packb(packable(value), use_bin_type=True)
    return packed


@schemathesis.deserializer("application/msgpack")
def from_msgpack(_: schemathesis.DeserializationContext, response: schemathesis.Response) -> Any:
    return plain(msgpack.unpackb(response.content, raw=False, object_hook=msgpack_numpy.decode))
