"""Job views and SIE encode responses, from stored float32 bytes straight to the wire.

Vectors stay numpy arrays until the encoder writes them: orjson writes float32 arrays natively
and msgpack-numpy writes raw bytes, so no Python float is ever made per value.
"""

from __future__ import annotations

from typing import Any

import msgpack
import msgpack_numpy
import numpy as np
import orjson

from common.schemas import StoredJob, iso

_JSON_OPTS = orjson.OPT_SERIALIZE_NUMPY


def vectors(job: StoredJob, result: bytes) -> np.ndarray:
    return np.frombuffer(result, dtype="<f4").reshape(job.n_items, job.dims or -1)


def timing(job: StoredJob) -> dict[str, float | None]:
    def ms(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else round((b - a) * 1000, 3)

    return {
        "queue_ms": ms(job.created_at, job.started_at),
        "inference_ms": job.inference_ms,
        "total_ms": ms(job.created_at, job.finished_at),
    }


def _item_ids(job: StoredJob) -> list[str | None]:
    return job.item_ids or [None] * job.n_items


def job_view(job: StoredJob, result: bytes | None, self_url: str) -> dict[str, Any]:
    items = None
    if result is not None:
        items = [
            {"id": item_id, "dense": row}
            for item_id, row in zip(_item_ids(job), vectors(job, result), strict=True)
        ]
    error = {"code": job.error_code, "message": job.error_message} if job.error_code else None
    return {
        "id": job.id,
        "status": job.status.value,
        "model": job.model,
        "lora_id": job.lora_id,
        "adapter_hash": job.adapter_hash,
        "n_items": job.n_items,
        "attempts": job.attempts,
        "worker": job.worker,
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
        "error": error,
        "result": None if items is None else {"items": items},
        "timing": timing(job),
        "links": {"self": self_url},
    }


def job_json(job: StoredJob, result: bytes | None, self_url: str) -> bytes:
    return orjson.dumps(job_view(job, result, self_url), option=_JSON_OPTS)


def sie_response(job: StoredJob, result: bytes, as_msgpack: bool) -> bytes:
    """SIE's encode response: one item per input, `dense` as {dims, dtype, values}."""
    dims = job.dims or 0
    items = []
    for item_id, row in zip(_item_ids(job), vectors(job, result), strict=True):
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
    return orjson.dumps(body, option=_JSON_OPTS)
