"""Batch records: OpenAI's Batch object for `/v1/embeddings`, kept in Redis (state and counters
only; the lines live in the object store).

A batch belongs to the tenant that created it: another tenant's id answers exactly as a missing
one. Status moves `validating -> in_progress -> finalizing -> completed`, or to `failed`
(the file could not be used at all), `expired` (past its window) or `cancelling -> cancelled`;
every move is compare-and-set in one Lua call, so a cancel racing the runner's own moves never
resurrects a batch, and the runner learns of a cancel at its next step.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from typing import Literal

import redis.asyncio as aioredis
from pydantic import BaseModel, ConfigDict, Field

from common import keys
from common.batch_record import (
    ALL_BATCH_EVENTS,
    TERMINAL,
    Batch,
    BatchEvent,
    BatchPage,
    OutputFormat,
    StoredBatch,
    decode_batch,
    encode_value,
    flat_fields,
)
from common.errors import BatchNotCancellable, BatchNotFound, TooManyBatches
from common.redis_values import texts


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

# KEYS: record, open zset, tenant's open set, webhook outbox. ARGV: id, allowed current statuses
# (space-separated), new status, retention for a terminal one (s, '' = not terminal), now, then
# fields as name, value. Answers the status it found ('' if the record is gone); moves only
# from an allowed one. A terminal move whose event the batch's webhook asked for puts the
# delivery in the outbox in the same step, as a job's terminal transition does.
_MOVE_LUA = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return '' end
if not string.find(' ' .. ARGV[2] .. ' ', ' ' .. status .. ' ', 1, true) then return status end
redis.call('HSET', KEYS[1], 'status', ARGV[3])
if #ARGV >= 6 then redis.call('HSET', KEYS[1], unpack(ARGV, 6)) end
if ARGV[4] ~= '' then
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('SREM', KEYS[3], ARGV[1])
  redis.call('EXPIRE', KEYS[1], ARGV[4])
  local events = redis.call('HGET', KEYS[1], 'webhook_events')
  if events and string.find(' ' .. events .. ' ', ' ' .. ARGV[3] .. ' ', 1, true) then
    redis.call('HSET', KEYS[1], 'webhook_status', 'pending')
    redis.call('ZADD', KEYS[4], ARGV[5], ARGV[1])
  end
end
return status
"""


class BatchRecords:
    def __init__(
        self, client: aioredis.Redis, retention_s: int, max_open_per_tenant: int, window_s: int
    ) -> None:
        self._r = client
        self._window_s = window_s
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
            "expires_at": int(now) + self._window_s,
            "metadata": request.metadata,
            "webhook_url": request.webhook.url if request.webhook else None,
            "webhook_events": " ".join(request.webhook.events) if request.webhook else None,
        }
        created = await self._create(
            keys=[
                keys.batch(batch_id), keys.OPEN_BATCHES, keys.tenant_open_batches(tenant),
                keys.tenant_batches(tenant),
            ],
            args=[batch_id, now, self._max_open, *flat_fields(fields)],
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
        ids = texts(await self._r.zrevrange(key, start, start + limit))
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
            keys=[
                keys.batch(batch_id), keys.OPEN_BATCHES, keys.tenant_open_batches(tenant),
                keys.WEBHOOK_OUTBOX,
            ],
            args=[
                batch_id, " ".join(allowed), status,
                self._retention_s if status in TERMINAL else "", time.time(),
                *flat_fields(fields or {}),
            ],
        )  # fmt: skip
        return reply.decode() if isinstance(reply, bytes) else str(reply)

    async def update(self, batch_id: str, fields: Mapping[str, object]) -> None:
        mapping = {k: encode_value(v) for k, v in fields.items() if v is not None}
        await self._r.hset(keys.batch(batch_id), mapping=mapping)  # type: ignore[arg-type]

    async def open_batches(self, limit: int) -> list[str]:
        return texts(await self._r.zrange(keys.OPEN_BATCHES, 0, limit - 1))
