"""safetensors bytes as float32 numpy arrays, without torch or the `safetensors` package.

The gateway validates adapters at upload with the same code the worker loads them with
(`common.adapter_check`), and the gateway may not import torch or `safetensors`. The format is
small: an 8-byte little-endian header length, a JSON header naming each tensor's dtype, shape
and byte range, then the bytes. Everything in it is untrusted: the header's length is bounded
before it is parsed, each range must lie in the buffer and hold exactly its shape's bytes, and
ranges may neither overlap nor leave gaps (what the `safetensors` package also refuses).
Floating dtypes only: a LoRA's weights are floats, and half or bfloat16 widen to float32 exactly.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import numpy.typing as npt

#: A LoRA's header names two tensors per module; 100 MB is what `safetensors` itself allows.
MAX_HEADER_BYTES = 100 * 1024 * 1024
_FLOAT_DTYPES: dict[str, str] = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2"}

Float32Array = npt.NDArray[np.float32]


class SafetensorsError(ValueError):
    """The bytes are not a safetensors file this reader takes; the message says why."""


def load(data: bytes) -> dict[str, Float32Array]:
    """Each tensor as a new, writable float32 array (never a view of `data`)."""
    header, start = _header(data)
    tensors: dict[str, Float32Array] = {}
    spans: list[tuple[int, int]] = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        array, span = _tensor(name, entry, data, start)
        tensors[name] = array
        spans.append(span)
    _check_coverage(spans, len(data) - start)
    return tensors


def _header(data: bytes) -> tuple[dict[str, Any], int]:
    if len(data) < 8:
        raise SafetensorsError("shorter than its 8-byte header length")
    size = int.from_bytes(data[:8], "little")
    if size > min(MAX_HEADER_BYTES, len(data) - 8):
        raise SafetensorsError(f"header length {size} runs past the file or the limit")
    try:
        header = json.loads(data[8 : 8 + size])
    except (ValueError, RecursionError):
        raise SafetensorsError("header is not JSON") from None
    if not isinstance(header, dict):
        raise SafetensorsError("header is not a JSON object")
    return header, 8 + size


def _tensor(name: str, entry: Any, data: bytes, start: int) -> tuple[Float32Array, tuple[int, int]]:
    shown = name[:100]
    if not isinstance(entry, dict):
        raise SafetensorsError(f"tensor {shown!r}: entry is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in _FLOAT_DTYPES:
        raise SafetensorsError(f"tensor {shown!r}: dtype {str(dtype)[:20]!r} is not a float")
    if not (isinstance(shape, list) and all(_count(n) for n in shape)):
        raise SafetensorsError(f"tensor {shown!r}: bad shape")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_count, offsets))):
        raise SafetensorsError(f"tensor {shown!r}: bad data_offsets")
    begin, end = offsets
    raw = np.dtype(_FLOAT_DTYPES[dtype])
    if not begin <= end <= len(data) - start:
        raise SafetensorsError(f"tensor {shown!r}: data_offsets outside the file")
    if (end - begin) != math.prod(shape) * raw.itemsize:
        raise SafetensorsError(f"tensor {shown!r}: {end - begin} bytes do not fit shape {shape}")
    flat = np.frombuffer(data, dtype=raw, count=math.prod(shape), offset=start + begin)
    return _float32(flat, dtype).reshape(shape), (begin, end)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _float32(flat: npt.NDArray[Any], dtype: str) -> Float32Array:
    if dtype == "BF16":  # the high half of a float32
        return (flat.astype(np.uint32) << 16).view(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):  # F64 beyond float32: inf, refused later
        return flat.astype(np.float32)


def _check_coverage(spans: list[tuple[int, int]], size: int) -> None:
    at = 0
    for begin, end in sorted(spans):
        if begin != at:
            raise SafetensorsError("tensor data overlaps or leaves gaps")
        at = end
    if at != size:
        raise SafetensorsError("bytes after the last tensor")
