"""Job store and state machine: the only code that writes job keys.

    queued ──start──▶ running ──succeed──▶ succeeded
      │                  │ └────fail─────▶ failed
      └──cancel / fail───┴───────────────▶ cancelled / failed

Every transition is one Lua script that checks the current status and writes in the same step
(compare-and-set), so a late or duplicate write (a redelivered message, a worker that lost its
lease) can never change a job that is already terminal. `start` also accepts `running`: that is a
redelivery of a job whose worker died, and it counts an attempt. Terminal transitions publish the
job id on `JOB_DONE_CHANNEL` for waiters and refresh both keys' TTL, so results live
`result_ttl_s` from completion.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.asyncio as aioredis

from common import keys
from common.schemas import JobStatus, StoredJob

# KEYS: job hash, result, stored message, pending zset, webhook outbox zset, queued-items hash.
# ARGV: the transition as JSON (see `_transition`), the result bytes.
_TRANSITION_LUA = """
local spec = cjson.decode(ARGV[1])
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return {0, false, 0, 0} end
local attempts = tonumber(redis.call('HGET', KEYS[1], 'attempts') or '0')
if not spec.allowed[cur] then return {0, cur, attempts, 0} end
redis.call('HSET', KEYS[1], 'status', spec.to)
if spec.count_attempt then attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1) end
for name, value in pairs(spec.fields) do redis.call('HSET', KEYS[1], name, value) end
redis.call('EXPIRE', KEYS[1], spec.ttl)
if spec.has_result then redis.call('SET', KEYS[2], ARGV[2], 'EX', spec.ttl) end
local webhook = 0
if spec.terminal then
  redis.call('DEL', KEYS[3])
  redis.call('ZREM', KEYS[4], spec.job)
  local counted = redis.call('HGET', KEYS[1], 'quota_items')
  if counted then
    redis.call('HINCRBY', KEYS[6], redis.call('HGET', KEYS[1], 'tenant'), -tonumber(counted))
    redis.call('HDEL', KEYS[1], 'quota_items')
  end
  local events = redis.call('HGET', KEYS[1], 'webhook_events')
  if events and string.find(' ' .. events .. ' ', ' ' .. spec.to .. ' ', 1, true) then
    redis.call('HSET', KEYS[1], 'webhook_status', 'pending', 'webhook_attempts', 0)
    redis.call('ZADD', KEYS[5], spec.now, spec.job)
    webhook = 1
  end
  redis.call('PUBLISH', spec.channel, spec.job)
elseif spec.redeliver_at then
  redis.call('ZADD', KEYS[4], spec.redeliver_at, spec.job)
end
return {1, cur, attempts, webhook}
"""

# KEYS: job hash, stored message, pending zset, queued-items hash.
# ARGV: record fields (JSON), message, ttl, redelivery deadline, tenant ('' = no item quota),
#       items, item limit. Creates nothing and answers {0, queued} if the quota would overflow.
_CREATE_LUA = """
if ARGV[5] ~= '' then
  local queued = tonumber(redis.call('HGET', KEYS[4], ARGV[5]) or '0')
  if queued + tonumber(ARGV[6]) > tonumber(ARGV[7]) then return {0, queued} end
  redis.call('HINCRBY', KEYS[4], ARGV[5], ARGV[6])
end
local fields = cjson.decode(ARGV[1])
for name, value in pairs(fields) do redis.call('HSET', KEYS[1], name, value) end
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[4], fields.id)
return {1, 0}
"""

# KEYS: job hash, webhook outbox.
# ARGV: job id, next attempt ('' = none: remove), field/value pairs ('' value: delete the field).
_WEBHOOK_RECORD_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 0
end
for i = 3, #ARGV, 2 do
  if ARGV[i + 1] == '' then redis.call('HDEL', KEYS[1], ARGV[i])
  else redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
if ARGV[2] == '' then redis.call('ZREM', KEYS[2], ARGV[1])
else redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1]) end
return 1
"""

#: KEYS and ARGV of one transition script call.
Op = tuple[list[str], list[str | bytes]]

_NUMERIC_FIELDS = {
    "n_items", "dims", "attempts", "webhook_attempts", "webhook_last_status_code", "quota_items",
    "n_tokens",
}  # fmt: skip
_FLOAT_FIELDS = {
    "created_at", "started_at", "finished_at", "inference_ms", "webhook_next_attempt_at",
}  # fmt: skip


@dataclass(frozen=True)
class Transition:
    """Outcome of a compare-and-set: `applied` is False when the job was missing (`previous`
    None) or in a status the transition does not start from."""

    applied: bool
    previous: JobStatus | None
    attempts: int
    webhook_due: bool = False  # the transition queued a webhook delivery: send it now
    job_id: str = field(default="", compare=False)


def encode_job(job: StoredJob) -> dict[str, str]:
    fields: dict[str, str] = {}
    for name, value in job.model_dump().items():
        if value is None:
            continue
        fields[name] = json.dumps(value) if name == "item_ids" else str(value)
    return fields


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def decode_job(raw: Mapping[bytes | str, bytes | str]) -> StoredJob:
    data: dict[str, Any] = {}
    for key, value in raw.items():
        name, text = _text(key), _text(value)
        if name == "item_ids":
            data[name] = json.loads(text)
        elif name in _NUMERIC_FIELDS:
            data[name] = int(text)
        elif name in _FLOAT_FIELDS:
            data[name] = float(text)
        else:
            data[name] = text
    return StoredJob.model_validate(data)


def _transition(
    job_id: str,
    allowed: tuple[JobStatus, ...],
    to: JobStatus,
    ttl_s: int,
    now: float,
    fields: Mapping[str, object],
    result: bytes | None = None,
    count_attempt: bool = False,
    redeliver_at: float | None = None,
) -> Op:
    """KEYS and ARGV of one `_TRANSITION_LUA` call."""
    spec: dict[str, Any] = {
        "allowed": {status.value: True for status in allowed},
        "to": to.value,
        "ttl": ttl_s,
        "now": now,
        "job": job_id,
        "terminal": to.terminal,
        "channel": keys.JOB_DONE_CHANNEL,
        "has_result": result is not None,
        "count_attempt": count_attempt,
        "fields": {name: str(value) for name, value in fields.items() if value is not None},
    }
    if redeliver_at is not None:
        spec["redeliver_at"] = redeliver_at
    job_keys = [keys.job(job_id), keys.job_result(job_id), keys.job_message(job_id)]
    zsets = [keys.PENDING_ZSET, keys.WEBHOOK_OUTBOX, keys.QUEUED_ITEMS]
    return [*job_keys, *zsets], [json.dumps(spec), result or b""]


_FROM_NOT_TERMINAL = (JobStatus.QUEUED, JobStatus.RUNNING)


def start_op(job_id: str, ttl_s: int, now: float, worker: str, redeliver_after: float) -> Op:
    fields = {"started_at": now, "worker": worker}
    return _transition(
        job_id, _FROM_NOT_TERMINAL, JobStatus.RUNNING, ttl_s, now, fields,
        count_attempt=True, redeliver_at=now + redeliver_after,
    )  # fmt: skip


def succeed_op(
    job_id: str, ttl_s: int, now: float, result: bytes, fields: Mapping[str, object]
) -> Op:
    fields = {"finished_at": now, **fields}
    return _transition(
        job_id, (JobStatus.RUNNING,), JobStatus.SUCCEEDED, ttl_s, now, fields, result=result
    )


def cancel_op(job_id: str, ttl_s: int, now: float) -> Op:
    return _transition(
        job_id, _FROM_NOT_TERMINAL, JobStatus.CANCELLED, ttl_s, now, {"finished_at": now}
    )


def fail_op(job_id: str, ttl_s: int, now: float, code: str, message: str) -> Op:
    fields = {"finished_at": now, "error_code": code, "error_message": message}
    return _transition(job_id, _FROM_NOT_TERMINAL, JobStatus.FAILED, ttl_s, now, fields)


def _transition_result(op: Op, reply: list[Any]) -> Transition:
    applied, previous, attempts, webhook = reply
    prev = JobStatus(previous.decode()) if previous else None
    job_id = json.loads(op[1][0])["job"]
    return Transition(bool(applied), prev, int(attempts), bool(webhook), job_id)


class JobStore:
    """Blocking store, for worker threads."""

    def __init__(self, client: redis.Redis, ttl_s: int, redeliver_after_s: float = 300) -> None:
        self.client = client
        self.ttl_s = ttl_s
        self.redeliver_after_s = redeliver_after_s
        self._script = client.register_script(_TRANSITION_LUA)
        self._webhook_record = client.register_script(_WEBHOOK_RECORD_LUA)

    def _apply(self, op: Op) -> Transition:
        return _transition_result(op, self._script(keys=op[0], args=op[1]))

    def get(self, job_id: str) -> StoredJob | None:
        raw = self.client.hgetall(keys.job(job_id))
        return decode_job(raw) if raw else None

    def start(self, job_id: str, now: float, worker: str = "") -> Transition:
        op = start_op(job_id, self.ttl_s, now, worker, self.redeliver_after_s)
        return self._apply(op)

    def overdue(self, now: float, limit: int) -> list[str]:
        """Unfinished jobs whose redelivery deadline has passed."""
        ids = self.client.zrangebyscore(keys.PENDING_ZSET, "-inf", now, start=0, num=limit)
        return [i.decode() if isinstance(i, bytes) else str(i) for i in ids]

    def stored_message(self, job_id: str) -> bytes | None:
        value = self.client.get(keys.job_message(job_id))
        return value.encode() if isinstance(value, str) else value

    def reschedule(self, job_id: str, at: float) -> None:
        self.client.zadd(keys.PENDING_ZSET, {job_id: at}, xx=True)

    def forget(self, job_id: str) -> None:
        self.client.zrem(keys.PENDING_ZSET, job_id)

    def due_webhooks(self, now: float, limit: int) -> list[str]:
        ids = self.client.zrangebyscore(keys.WEBHOOK_OUTBOX, "-inf", now, start=0, num=limit)
        return [i.decode() if isinstance(i, bytes) else str(i) for i in ids]

    def webhook_due_at(self, job_id: str) -> float | None:
        score = self.client.zscore(keys.WEBHOOK_OUTBOX, job_id)
        return None if score is None else float(score)

    def lease_webhook(self, job_id: str, until: float) -> None:
        """Push a due delivery back while its attempt is in flight (the attempt sets the real
        next time; if the attempt is lost, the delivery comes due again)."""
        self.client.zadd(keys.WEBHOOK_OUTBOX, {job_id: until}, xx=True)

    def record_webhook(
        self, job_id: str, fields: Mapping[str, object], next_attempt_at: float | None
    ) -> bool:
        """The outcome of one delivery attempt; `next_attempt_at` None ends the delivery."""
        args: list[str] = [job_id, "" if next_attempt_at is None else repr(next_attempt_at)]
        for name, value in fields.items():
            args += [name, "" if value is None else str(value)]
        done = self._webhook_record(keys=[keys.job(job_id), keys.WEBHOOK_OUTBOX], args=args)
        return bool(done)

    def succeed(
        self, job_id: str, now: float, result: bytes, fields: Mapping[str, object]
    ) -> Transition:
        return self._apply(succeed_op(job_id, self.ttl_s, now, result, fields))

    def fail(self, job_id: str, now: float, code: str, message: str) -> Transition:
        return self._apply(fail_op(job_id, self.ttl_s, now, code, message))


class AsyncJobStore:
    """Non-blocking store, for the gateway."""

    def __init__(self, client: aioredis.Redis, ttl_s: int, redeliver_after_s: float = 300) -> None:
        self._r = client
        self.ttl_s = ttl_s
        self.redeliver_after_s = redeliver_after_s
        self._script = client.register_script(_TRANSITION_LUA)
        self._create = client.register_script(_CREATE_LUA)

    async def _apply(self, op: Op) -> Transition:
        return _transition_result(op, await self._script(keys=op[0], args=op[1]))

    async def create(
        self, job: StoredJob, message: bytes, max_queued_items: int | None = None
    ) -> int | None:
        """The record, a copy of its queue message and its redelivery deadline, in one step (if
        the broker loses the message, the sweeper publishes the copy again). With an item limit
        the job's items are reserved against its tenant's quota in the same step; if they do not
        fit, nothing is created and the tenant's queued item count is returned."""
        quota = job.tenant is not None and max_queued_items is not None
        if quota:
            job = job.model_copy(update={"quota_items": job.n_items})
        created, queued = await self._create(
            keys=[keys.job(job.id), keys.job_message(job.id), keys.PENDING_ZSET, keys.QUEUED_ITEMS],
            args=[
                json.dumps(encode_job(job)),
                message,
                self.ttl_s,
                repr(job.created_at + self.redeliver_after_s),
                (job.tenant or "") if quota else "",
                job.n_items,
                max_queued_items or 0,
            ],
        )
        return None if int(created) else int(queued)

    async def get(self, job_id: str) -> StoredJob | None:
        raw = await self._r.hgetall(keys.job(job_id))
        return decode_job(raw) if raw else None

    async def get_result(self, job_id: str) -> bytes | None:
        value = await self._r.get(keys.job_result(job_id))
        return value.encode() if isinstance(value, str) else value

    async def fail(self, job_id: str, now: float, code: str, message: str) -> Transition:
        return await self._apply(fail_op(job_id, self.ttl_s, now, code, message))

    async def cancel(self, job_id: str, now: float) -> Transition:
        return await self._apply(cancel_op(job_id, self.ttl_s, now))
