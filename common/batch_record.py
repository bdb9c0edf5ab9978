"""A batch's record in Redis, as the gateway writes it and the webhook sender reads it: the
public Batch object (OpenAI's shape) and what only loraq needs beside it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from common.redis_values import texts

BatchStatus = Literal[
    "validating", "in_progress", "finalizing", "completed", "failed", "expired", "cancelling",
    "cancelled",
]  # fmt: skip
TERMINAL: frozenset[str] = frozenset({"completed", "failed", "expired", "cancelled"})
OutputFormat = Literal["jsonl", "parquet", "npy"]
BatchEvent = Literal["completed", "failed", "expired", "cancelled"]
ALL_BATCH_EVENTS: tuple[BatchEvent, ...] = ("completed", "failed", "expired", "cancelled")
#: The one completion window OpenAI offers, in seconds.
WINDOW_S = {"24h": 24 * 3600}
_TIMES = (
    "created_at", "in_progress_at", "expires_at", "finalizing_at", "completed_at", "failed_at",
    "expired_at", "cancelling_at", "cancelled_at",
)  # fmt: skip
_COUNTS = ("total", "completed", "failed")
_IDS = ("output_file_id", "error_file_id", "ids_file_id")


class BatchError(BaseModel):
    code: str
    message: str
    line: int | None = None
    param: str | None = None


class BatchErrors(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchError]


class RequestCounts(BaseModel):
    total: int = 0
    completed: int = 0
    failed: int = 0


class BatchWebhookState(BaseModel):
    """loraq's: the batch's webhook and its delivery log, as a job view shows its own."""

    url: str
    events: list[str]
    status: str | None = None  # pending | delivered | failed; None until the batch ends
    attempts: int = 0
    last_status_code: int | None = None
    last_error: str | None = None
    next_attempt_at: float | None = None


class Batch(BaseModel):
    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    errors: BatchErrors | None = None
    input_file_id: str
    completion_window: str
    status: BatchStatus
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int
    in_progress_at: int | None = None
    expires_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: RequestCounts = RequestCounts()
    metadata: dict[str, str] | None = None
    output_format: OutputFormat = "jsonl"
    #: With `output_format: "npy"`: one JSON line per row of the .npy (custom_id, index).
    ids_file_id: str | None = None
    webhook: BatchWebhookState | None = None


class BatchPage(BaseModel):
    object: Literal["list"] = "list"
    data: list[Batch]
    first_id: str | None
    last_id: str | None
    has_more: bool


class StoredBatch(BaseModel):
    """The record as the runner reads it: the public view plus what only loraq needs."""

    model_config = ConfigDict(extra="ignore")

    batch: Batch
    tenant: str
    key: str | None = None
    webhook_url: str | None = None
    webhook_events: str | None = None  # space-separated events
    webhook_status: str | None = None  # pending | delivered | failed
    webhook_attempts: int | None = None
    chunks: int = 0
    dims: int | None = None


def encode_value(value: object) -> str:
    return (
        json.dumps(value, separators=(",", ":")) if isinstance(value, dict | list) else str(value)
    )


def flat_fields(fields: Mapping[str, object]) -> list[str]:
    return [part for k, v in fields.items() if v is not None for part in (k, encode_value(v))]


def decode_batch(raw: Mapping[bytes | str, bytes | str]) -> StoredBatch:
    data = dict(zip(texts(raw.keys()), texts(raw.values()), strict=True))
    batch: dict[str, Any] = {
        "id": data["id"],
        "endpoint": data["endpoint"],
        "input_file_id": data["input_file_id"],
        "completion_window": data["completion_window"],
        "status": data["status"],
        "output_format": data.get("output_format", "jsonl"),
        "request_counts": {k: int(data.get(k, 0)) for k in _COUNTS},
        **{k: int(float(data[k])) for k in _TIMES if k in data},
        **{k: data[k] for k in _IDS if k in data},
    }
    if "metadata" in data:
        batch["metadata"] = json.loads(data["metadata"])
    if "errors" in data:
        batch["errors"] = {"data": json.loads(data["errors"])}
    if "webhook_url" in data:
        batch["webhook"] = {
            "url": data["webhook_url"],
            "events": data.get("webhook_events", "").split(),
            "status": data.get("webhook_status"),
            "attempts": int(data.get("webhook_attempts") or 0),
            "last_status_code": data.get("webhook_last_status_code") or None,
            "last_error": data.get("webhook_last_error") or None,
            "next_attempt_at": data.get("webhook_next_attempt_at") or None,
        }
    return StoredBatch(
        batch=Batch.model_validate(batch),
        tenant=data["tenant"],
        key=data.get("key"),
        webhook_url=data.get("webhook_url"),
        webhook_events=data.get("webhook_events"),
        webhook_status=data.get("webhook_status"),
        webhook_attempts=int(data["webhook_attempts"]) if data.get("webhook_attempts") else None,
        chunks=int(data.get("chunks", 0)),
        dims=int(data["dims"]) if "dims" in data else None,
    )
