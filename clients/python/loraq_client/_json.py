"""JSON through orjson when it is installed (`pip install 'loraq-client[fast]'`), else through
the standard library. A job's result comes back as JSON, hundreds of floats per text, which
orjson reads several times faster; but a compiled dependency should not be the price of talking
to a gateway. Both paths read the same documents and write the same values: compact UTF-8,
numpy arrays as lists, float32 as the shortest decimal that reads back as the same float32,
non-finite floats in arrays as null."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

try:
    import orjson
except ModuleNotFoundError:

    def loads(data: bytes) -> Any:
        """Raises ValueError for anything orjson would refuse: not UTF-8, not JSON, NaN."""
        try:
            return json.loads(data.decode(), parse_constant=_refuse_constant)
        except RecursionError as exc:  # orjson refuses deep nesting with a JSONDecodeError
            raise ValueError("JSON nested too deep") from exc

    def dumps(obj: Any) -> bytes:
        text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), default=_numpy)
        return text.encode()

else:

    def loads(data: bytes) -> Any:
        """Raises ValueError (orjson.JSONDecodeError) for anything that is not JSON."""
        return orjson.loads(data)

    def dumps(obj: Any) -> bytes:
        return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _numpy(obj: object) -> object:
    if not isinstance(obj, np.ndarray | np.generic):
        raise TypeError(f"Type is not JSON serializable: {type(obj).__name__}")
    array = np.asarray(obj)
    if array.dtype.kind != "f":
        return array.tolist()
    # A float32's str is its shortest round-trip decimal, the one orjson writes; tolist() alone
    # would write the float32's exact binary value in float64 digits (0.1 -> 0.10000000149...).
    shortest = array.astype(str).astype(np.float64)
    values = shortest.astype(object)
    values[~np.isfinite(shortest)] = None
    return values.tolist()
