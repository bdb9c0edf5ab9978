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
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio as aioredis

from common import keys
from common.schemas import JobStatus, StoredJob

# KEYS: job hash, result, stored message, pending zset.
# ARGV: allowed statuses, new status, ttl, channel ('' unless terminal), has result, result,
#       count an attempt, job id, redelivery deadline ('' unless not terminal), field/value pairs.
_TRANSITION_LUA = """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return {0, false, 0} end
if not string.find(ARGV[1], ' ' .. cur .. ' ', 1, true) then
  return {0, cur, tonumber(redis.call('HGET', KEYS[1], 'attempts') or '0')}
end
redis.call('HSET', KEYS[1], 'status', ARGV[2])
local attempts = tonumber(redis.call('HGET', KEYS[1], 'attempts') or '0')
if ARGV[7] == '1' then attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1) end
for i = 10, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('EXPIRE', KEYS[1], ARGV[3])
if ARGV[5] == '1' then redis.call('SET', KEYS[2], ARGV[6], 'EX', ARGV[3]) end
if ARGV[9] ~= '' then redis.call('ZADD', KEYS[4], ARGV[9], ARGV[8]) end
if ARGV[4] ~= '' then
  redis.call('DEL', KEYS[3])
  redis.call('ZREM', KEYS[4], ARGV[8])
  redis.call('PUBLISH', ARGV[4], ARGV[8])
end
return {1, cur, attempts}
"""

#: KEYS and ARGV of one transition script call.
Op = tuple[list[str], list[str | bytes]]

_NUMERIC_FIELDS = {"n_items", "dims", "attempts"}
_FLOAT_FIELDS = {"created_at", "started_at", "finished_at", "inference_ms"}


@dataclass(frozen=True)
class Transition:
    """Outcome of a compare-and-set: `applied` is False when the job was missing (`previous`
    None) or in a status the transition does not start from."""

    applied: bool
    previous: JobStatus | None
    attempts: int


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
    fields: Mapping[str, object],
    result: bytes | None = None,
    count_attempt: bool = False,
    redeliver_at: float | None = None,
) -> Op:
    """KEYS and ARGV of one `_TRANSITION_LUA` call."""
    args: list[str | bytes] = [
        " " + " ".join(allowed) + " ",
        to.value,
        str(ttl_s),
        keys.JOB_DONE_CHANNEL if to.terminal else "",
        "0" if result is None else "1",
        result or b"",
        "1" if count_attempt else "0",
        job_id,
        "" if redeliver_at is None else repr(redeliver_at),
    ]
    for name, value in fields.items():
        if value is not None:
            args += [name, str(value)]
    job_keys = [keys.job(job_id), keys.job_result(job_id), keys.job_message(job_id)]
    return [*job_keys, keys.PENDING_ZSET], args


_FROM_NOT_TERMINAL = (JobStatus.QUEUED, JobStatus.RUNNING)


def start_op(job_id: str, ttl_s: int, now: float, worker: str, redeliver_after: float) -> Op:
    fields = {"started_at": now, "worker": worker}
    return _transition(
        job_id, _FROM_NOT_TERMINAL, JobStatus.RUNNING, ttl_s, fields,
        count_attempt=True, redeliver_at=now + redeliver_after,
    )  # fmt: skip


def succeed_op(
    job_id: str, ttl_s: int, now: float, result: bytes, fields: Mapping[str, object]
) -> Op:
    fields = {"finished_at": now, **fields}
    return _transition(
        job_id, (JobStatus.RUNNING,), JobStatus.SUCCEEDED, ttl_s, fields, result=result
    )


def fail_op(job_id: str, ttl_s: int, now: float, code: str, message: str) -> Op:
    fields = {"finished_at": now, "error_code": code, "error_message": message}
    return _transition(job_id, _FROM_NOT_TERMINAL, JobStatus.FAILED, ttl_s, fields)


def _transition_result(reply: list[Any]) -> Transition:
    applied, previous, attempts = reply
    prev = JobStatus(previous.decode()) if previous else None
    return Transition(applied=bool(applied), previous=prev, attempts=int(attempts))


class JobStore:
    """Blocking store, for worker threads."""

    def __init__(self, client: redis.Redis, ttl_s: int, redeliver_after_s: float = 300) -> None:
        self.client = client
        self.ttl_s = ttl_s
        self.redeliver_after_s = redeliver_after_s
        self._script = client.register_script(_TRANSITION_LUA)

    def _apply(self, op: Op) -> Transition:
        return _transition_result(self._script(keys=op[0], args=op[1]))

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

    async def _apply(self, op: Op) -> Transition:
        return _transition_result(await self._script(keys=op[0], args=op[1]))

    async def create(self, job: StoredJob, message: bytes) -> None:
        """The record, a copy of its queue message, and its redelivery deadline, in one step:
        if the broker loses the message, the sweeper publishes the copy again."""
        key = keys.job(job.id)
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=encode_job(job))  # type: ignore[arg-type]
            pipe.expire(key, self.ttl_s)
            pipe.set(keys.job_message(job.id), message, ex=self.ttl_s)
            pipe.zadd(keys.PENDING_ZSET, {job.id: job.created_at + self.redeliver_after_s})
            await pipe.execute()

    async def get(self, job_id: str) -> StoredJob | None:
        raw = await self._r.hgetall(keys.job(job_id))
        return decode_job(raw) if raw else None

    async def get_result(self, job_id: str) -> bytes | None:
        value = await self._r.get(keys.job_result(job_id))
        return value.encode() if isinstance(value, str) else value

    async def fail(self, job_id: str, now: float, code: str, message: str) -> Transition:
        return await self._apply(fail_op(job_id, self.ttl_s, now, code, message))
