"""Batch records: OpenAI's Batch object for `/v1/embeddings`, kept in Redis (state and counters
only; the lines live in the object store).

A batch belongs to the tenant that created it: another tenant's id answers exactly as a missing
one. Status moves `validating -> in_progress -> finalizing -> completed`, or to `failed`
(the file could not be used at all), `expired` (past its window) or `cancelling -> cancelled`;
every move is compare-and-set in one Lua call, so a cancel racing the runner's own moves never
resurrects a batch, and the runner learns of a cancel at its next step.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from typing import Any, Literal

import redis.asyncio as aioredis
from pydantic import BaseModel, ConfigDict, Field

from common import keys
from common.errors import BatchNotCancellable, BatchNotFound, TooManyBatches

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


class BatchWebhook(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(max_length=2048)
    events: list[BatchEvent] = Field(
        default_factory=lambda: list(ALL_BATCH_EVENTS), min_length=1, max_length=4
    )


class BatchCreate(BaseModel):
    """OpenAI's create body; `output_format` and `webhook` are loraq's (the openai client sends
    them with `extra_body`)."""

    model_config = ConfigDict(extra="forbid")

    input_file_id: str = Field(max_length=128)
    endpoint: Literal["/v1/embeddings"]
    completion_window: Literal["24h"]
    metadata: dict[str, str] | None = Field(None, max_length=16)
    output_format: OutputFormat = "jsonl"
    webhook: BatchWebhook | None = None


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
    webhook: BatchWebhook | None = None
    chunks: int = 0
    dims: int | None = None


def new_batch_id() -> str:
    return "batch_" + secrets.token_hex(12)


# KEYS: record, open zset, tenant's open set, tenant's zset. ARGV: id, created, open cap,
# then the record's fields as name, value pairs.
_CREATE_LUA = """
if redis.call('SCARD', KEYS[3]) >= tonumber(ARGV[3]) then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[2], ARGV[1])
return 1
"""

# KEYS: record, open zset, tenant's open set. ARGV: id, allowed current statuses (space-separated),
# new status, retention for a terminal one (s, '' = not terminal), then fields as name, value.
# Answers the status it found ('' if the record is gone); moves only from an allowed one.
_MOVE_LUA = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return '' end
if not string.find(' ' .. ARGV[2] .. ' ', ' ' .. status .. ' ', 1, true) then return status end
redis.call('HSET', KEYS[1], 'status', ARGV[3])
if #ARGV >= 5 then redis.call('HSET', KEYS[1], unpack(ARGV, 5)) end
if ARGV[4] ~= '' then
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('SREM', KEYS[3], ARGV[1])
  redis.call('EXPIRE', KEYS[1], ARGV[4])
end
return status
"""


def _encode(value: object) -> str:
    return (
        json.dumps(value, separators=(",", ":")) if isinstance(value, dict | list) else str(value)
    )


def _flat(fields: Mapping[str, object]) -> list[str]:
    return [part for k, v in fields.items() if v is not None for part in (k, _encode(v))]


def _texts(values: Any) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def decode_batch(raw: Mapping[bytes | str, bytes | str]) -> StoredBatch:
    data = dict(zip(_texts(raw.keys()), _texts(raw.values()), strict=True))
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
    return StoredBatch(
        batch=Batch.model_validate(batch),
        tenant=data["tenant"],
        key=data.get("key"),
        webhook=BatchWebhook.model_validate_json(data["webhook"]) if "webhook" in data else None,
        chunks=int(data.get("chunks", 0)),
        dims=int(data["dims"]) if "dims" in data else None,
    )


class BatchRecords:
    def __init__(self, client: aioredis.Redis, retention_s: int, max_open_per_tenant: int) -> None:
        self._r = client
        self._retention_s = retention_s
        self._max_open = max_open_per_tenant
        self._create = client.register_script(_CREATE_LUA)
        self._move = client.register_script(_MOVE_LUA)

    async def create(
        self, tenant: str, key_sha256: str | None, request: BatchCreate, now: float
    ) -> Batch:
        """`key_sha256`: the API key it runs with (its adapter allowlist and quotas); a batch
        whose key is removed before it runs fails instead of running with no limits."""
        batch_id = new_batch_id()
        fields: dict[str, object] = {
            "id": batch_id,
            "tenant": tenant,
            "key": key_sha256,
            "endpoint": request.endpoint,
            "input_file_id": request.input_file_id,
            "completion_window": request.completion_window,
            "status": "validating",
            "output_format": request.output_format,
            "created_at": int(now),
            "expires_at": int(now) + WINDOW_S[request.completion_window],
            "metadata": request.metadata,
            "webhook": request.webhook.model_dump_json() if request.webhook else None,
        }
        created = await self._create(
            keys=[
                keys.batch(batch_id), keys.OPEN_BATCHES, keys.tenant_open_batches(tenant),
                keys.tenant_batches(tenant),
            ],
            args=[batch_id, now, self._max_open, *_flat(fields)],
        )  # fmt: skip
        if not int(created):
            raise TooManyBatches(
                f"this tenant has {self._max_open} batches open; wait for one to end"
            )
        stored = await self.load(batch_id)
        assert stored is not None  # just written
        return stored.batch

    async def load(self, batch_id: str) -> StoredBatch | None:
        raw = await self._r.hgetall(keys.batch(batch_id))
        return decode_batch(raw) if raw else None

    async def get(self, batch_id: str, tenant: str) -> Batch:
        stored = await self.load(batch_id) if batch_id.startswith("batch_") else None
        if stored is None or stored.tenant != tenant:
            raise BatchNotFound(f"no batch {batch_id[:64]!r}")
        return stored.batch

    async def page(self, tenant: str, after: str | None, limit: int) -> BatchPage:
        """Newest first, as OpenAI lists them; `after` is the last id of the previous page."""
        key = keys.tenant_batches(tenant)
        start = 0
        if after is not None:
            rank = await self._r.zrevrank(key, after)
            if rank is None:
                raise BatchNotFound(f"no batch {after[:64]!r}")
            start = int(rank) + 1  # type: ignore[arg-type]
        ids = _texts(await self._r.zrevrange(key, start, start + limit))
        batches = []
        for batch_id in ids[:limit]:
            stored = await self.load(batch_id)
            if stored is not None:
                batches.append(stored.batch)
        return BatchPage(
            data=batches,
            first_id=batches[0].id if batches else None,
            last_id=batches[-1].id if batches else None,
            has_more=len(ids) > limit,
        )

    async def request_cancel(self, batch_id: str, tenant: str, now: float) -> Batch:
        batch = await self.get(batch_id, tenant)
        cancellable = ("validating", "in_progress")
        found = await self.move(
            batch.id, tenant, cancellable, "cancelling", {"cancelling_at": int(now)}
        )
        if found not in (*cancellable, "cancelling"):
            raise BatchNotCancellable(f"batch {batch_id} is {found or 'gone'}: nothing to cancel")
        return await self.get(batch_id, tenant)

    async def move(
        self,
        batch_id: str,
        tenant: str,
        allowed: tuple[str, ...],
        status: str,
        fields: Mapping[str, object] | None = None,
    ) -> str:
        """Compare-and-set: `status` (and `fields`) only from one of `allowed`; answers the
        status found."""
        reply = await self._move(
            keys=[keys.batch(batch_id), keys.OPEN_BATCHES, keys.tenant_open_batches(tenant)],
            args=[
                batch_id, " ".join(allowed), status,
                self._retention_s if status in TERMINAL else "", *_flat(fields or {}),
            ],
        )  # fmt: skip
        return reply.decode() if isinstance(reply, bytes) else str(reply)

    async def update(self, batch_id: str, fields: Mapping[str, object]) -> None:
        mapping = {k: _encode(v) for k, v in fields.items() if v is not None}
        await self._r.hset(keys.batch(batch_id), mapping=mapping)  # type: ignore[arg-type]

    async def open_batches(self, limit: int) -> list[str]:
        return _texts(await self._r.zrange(keys.OPEN_BATCHES, 0, limit - 1))
