"""A job as users see it (GET /v1/jobs/{id} and webhook payloads), from the stored record.

Vectors stay numpy arrays until the encoder writes them: orjson writes float32 arrays natively,
so no Python float is ever made per value.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from common.schemas import StoredJob, iso

JSON_OPTS = orjson.OPT_SERIALIZE_NUMPY


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


def item_ids(job: StoredJob) -> list[str | None]:
    return job.item_ids or [None] * job.n_items


def job_view(
    job: StoredJob, result: bytes | None, self_url: str, internal: bool = False
) -> dict[str, Any]:
    """`internal` (operators only) adds which worker ran the job: a host name and process id
    are no tenant's business."""
    items = None
    if result is not None:
        items = [
            {"id": item_id, "dense": row}
            for item_id, row in zip(item_ids(job), vectors(job, result), strict=True)
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
        **({"worker": job.worker} if internal else {}),
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
        "error": error,
        "result": None if items is None else {"items": items},
        "timing": timing(job),
        "webhook": webhook_view(job),
        "links": {"self": self_url},
    }


def webhook_view(job: StoredJob) -> dict[str, Any] | None:
    if job.webhook_url is None:
        return None
    return {
        "url": job.webhook_url,
        "events": (job.webhook_events or "").split(),
        "status": job.webhook_status or "waiting",
        "attempts": job.webhook_attempts or 0,
        "last_status_code": job.webhook_last_status_code,
        "last_error": job.webhook_last_error,
        "next_attempt_at": iso(job.webhook_next_attempt_at),
    }


def job_json(view: dict[str, Any]) -> bytes:
    return orjson.dumps(view, option=JSON_OPTS)
