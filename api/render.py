"""Job views and SIE encode responses, from stored float32 bytes straight to the wire
(msgpack-numpy writes raw bytes, orjson float32 arrays natively)."""

from __future__ import annotations

from typing import Any

import msgpack
import msgpack_numpy
import orjson

from common.job_view import JSON_OPTS, item_ids, timing, vectors
from common.schemas import StoredJob


def sie_response(job: StoredJob, result: bytes, as_msgpack: bool) -> bytes:
    """SIE's encode response: one item per input, `dense` as {dims, dtype, values}."""
    dims = job.dims or 0
    items = []
    for item_id, row in zip(item_ids(job), vectors(job, result), strict=True):
        item: dict[str, Any] = {"dense": {"dims": dims, "dtype": "float32", "values": row}}
        if item_id is not None:
            item["id"] = item_id
        items.append(item)
    body: dict[str, Any] = {"model": job.model, "items": items, "timing": timing(job)}
    if job.lora_id:
        body["lora_id"], body["adapter_hash"] = job.lora_id, job.adapter_hash
    if as_msgpack:
        packed: bytes = msgpack.packb(body, default=msgpack_numpy.encode, use_bin_type=True)
        return packed
    return orjson.dumps(body, option=JSON_OPTS)
