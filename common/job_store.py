"""Job store and state machine: the only code that writes job keys.

    queued ──start──▶ running ──succeed──▶ succeeded
      │                  │ └────fail─────▶ failed
      └──cancel / fail───┴───────────────▶ cancelled / failed

Every transition is one Lua script that checks the current status and writes in the same step
(compare-and-set), so a late or duplicate write (a redelivered message, a worker that lost its
lease) can never change a job that is already terminal. `start` gives the worker a hold on the
job (`keys.job_hold`), which its heartbeat renews while it works on the job. `start` also accepts
`running` once that hold is gone (the worker died, or let go without an outcome): a redelivery,
which counts an attempt; while the hold lives, a second message for the job is a duplicate and
is refused without counting. A cancel leaves a held job's quota counts to its holder, who frees
them when it stops computing (`let_go`). Terminal transitions publish the
job id on `JOB_DONE_CHANNEL` for waiters and refresh both keys' TTL, so results live
`result_ttl_s` from completion.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.asyncio as aioredis

from common import keys
from common.celery_wire import envelope
from common.errors import QueueUnavailable
from common.redis_values import RENEW_IF_HOLDER, text
from common.schemas import JobStatus, StoredJob

# Every script reads what it needs of the job hash in one HMGET and writes it in one HSET:
# inside Redis, each call a script makes costs about as much as a small command (3-5 us), and
# these scripts run for every job (bench/control_plane.py, Redis calls per job).

# A Lua function the transition and let-go scripts are registered with: frees what an unfinished
# job counts against its tenant's quotas (its items, its place in its model's queue share), once.
# `slot`, `counted`, `tenant`: the job's quota_job, quota_items and tenant fields (false: unset).
_RELEASE_LUA = """
local function release(job, queued_items, queued_jobs, slot, counted, tenant)
  if slot then
    if redis.call('HINCRBY', queued_jobs, slot, -1) <= 0 then
      redis.call('HDEL', queued_jobs, slot)
    end
  end
  if counted then
    redis.call('HINCRBY', queued_items, tenant, -tonumber(counted))
  end
  if slot or counted then redis.call('HDEL', job, 'quota_job', 'quota_items') end
end
"""

# KEYS: job hash, result, stored message, pending zset, webhook outbox zset, queued-items hash,
#       queued-jobs hash, hold.
# ARGV: the transition as JSON (see `_transition`), the result bytes.
# A start (`spec.hold`) is refused while another delivery's hold lives, and takes the hold. A
# cancel (`spec.after_holder`) of a job whose holder lives leaves its hold, redelivery deadline
# and quota counts in place: the holder frees them when it stops computing (`_LET_GO_LUA`).
_TRANSITION_LUA = """
local spec = cjson.decode(ARGV[1])
local job = redis.call('HMGET', KEYS[1], 'status', 'attempts', 'quota_job', 'quota_items',
                       'tenant', 'webhook_events')
local cur = job[1]
if not cur then return {0, false, 0, 0} end
local attempts = tonumber(job[2] or '0')
if not spec.allowed[cur] then return {0, cur, attempts, 0} end
local held = (spec.hold or spec.after_holder) and redis.call('EXISTS', KEYS[8]) == 1
if spec.hold and held then return {0, cur, attempts, 0} end
local fields = {'status', spec.to}
if spec.count_attempt then
  attempts = attempts + 1
  fields[#fields + 1] = 'attempts'
  fields[#fields + 1] = attempts
end
local webhook = 0
local events = job[6]
local wanted = events and string.find(' ' .. events .. ' ', ' ' .. spec.to .. ' ', 1, true)
if spec.terminal and wanted then
  webhook = 1
  for _, v in ipairs({'webhook_status', 'pending', 'webhook_attempts', 0}) do
    fields[#fields + 1] = v
  end
end
for name, value in pairs(spec.fields) do
  fields[#fields + 1] = name
  fields[#fields + 1] = value
end
redis.call('HSET', KEYS[1], unpack(fields))
if spec.hold then redis.call('SET', KEYS[8], spec.hold.worker, 'PX', spec.hold.ttl_ms) end
redis.call('EXPIRE', KEYS[1], spec.ttl)
if spec.has_result then redis.call('SET', KEYS[2], ARGV[2], 'EX', spec.ttl) end
if spec.terminal then
  if spec.after_holder and held then
    redis.call('DEL', KEYS[3])
  else
    redis.call('DEL', KEYS[3], KEYS[8])
    redis.call('ZREM', KEYS[4], spec.job)
    release(KEYS[1], KEYS[6], KEYS[7], job[3], job[4], job[5])
  end
  if webhook == 1 then redis.call('ZADD', KEYS[5], spec.now, spec.job) end
  redis.call('PUBLISH', spec.channel, spec.job)
elseif spec.redeliver_at then
  redis.call('ZADD', KEYS[4], spec.redeliver_at, spec.job)
end
return {1, cur, attempts, webhook}
"""

# KEYS: job hash, hold, pending zset, queued-items hash, queued-jobs hash.
# ARGV: job id, the worker letting go ('' = none: only settle a job nobody holds).
# A worker drops its hold; a job that is already terminal (cancelled while it computed) and that
# no one holds any more leaves the redelivery index and frees its quota counts. Answers 1 then.
_LET_GO_LUA = """
if ARGV[2] ~= '' and redis.call('GET', KEYS[2]) == ARGV[2] then redis.call('DEL', KEYS[2]) end
local job = redis.call('HMGET', KEYS[1], 'status', 'quota_job', 'quota_items', 'tenant')
local status = job[1]
if status == 'queued' or status == 'running' or redis.call('EXISTS', KEYS[2]) == 1 then
  return 0
end
redis.call('ZREM', KEYS[3], ARGV[1])
release(KEYS[1], KEYS[4], KEYS[5], job[2], job[3], job[4])
return 1
"""

# KEYS: job hash, stored message, pending zset, queued-items hash, queued-jobs hash, queue list.
# ARGV: job id, message, ttl, redelivery deadline, tenant ('' = no item quota), items, item
#       limit, the tenant's queued-jobs field ('' = no share), its job limit, the queue entry
#       (`common.celery_wire.envelope`), then the record's fields as name, value pairs.
# Creates nothing and answers {0, count, 'items' | 'jobs'} if a quota would overflow, and
# {1, 1} if the job exists already.
_CREATE_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 then return {1, 1} end
if ARGV[8] ~= '' then
  local held = tonumber(redis.call('HGET', KEYS[5], ARGV[8]) or '0')
  if held >= tonumber(ARGV[9]) then return {0, held, 'jobs'} end
end
if ARGV[5] ~= '' then
  local queued = tonumber(redis.call('HGET', KEYS[4], ARGV[5]) or '0')
  if queued + tonumber(ARGV[6]) > tonumber(ARGV[7]) then return {0, queued, 'items'} end
  redis.call('HINCRBY', KEYS[4], ARGV[5], ARGV[6])
end
if ARGV[8] ~= '' then redis.call('HINCRBY', KEYS[5], ARGV[8], 1) end
redis.call('HSET', KEYS[1], unpack(ARGV, 11))
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
redis.call('LPUSH', KEYS[6], ARGV[10])
return {1, 0}
"""

# KEYS: job hash, webhook outbox, result.
# ARGV: job id, next attempt ('' = none: remove), seconds the job's keys must live at least,
#       field/value pairs ('' value: delete the field).
_WEBHOOK_RECORD_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 0
end
for i = 4, #ARGV, 2 do
  if ARGV[i + 1] == '' then redis.call('HDEL', KEYS[1], ARGV[i])
  else redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
if ARGV[2] == '' then redis.call('ZREM', KEYS[2], ARGV[1])
else redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1]) end
for _, key in ipairs({KEYS[1], KEYS[3]}) do
  local ttl = redis.call('TTL', key)
  if ttl >= 0 and ttl < tonumber(ARGV[3]) then redis.call('EXPIRE', key, ARGV[3]) end
end
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


def _bytes(value: bytes | str | None) -> bytes | None:
    return value.encode() if isinstance(value, str) else value


def decode_job(raw: Mapping[bytes | str, bytes | str]) -> StoredJob:
    data: dict[str, Any] = {}
    for key, value in raw.items():
        name, value_text = text(key), text(value)
        if name == "item_ids":
            data[name] = json.loads(value_text)
        elif name in _NUMERIC_FIELDS:
            data[name] = int(value_text)
        elif name in _FLOAT_FIELDS:
            data[name] = float(value_text)
        else:
            data[name] = value_text
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
    hold: tuple[str, float] | None = None,
    after_holder: bool = False,
) -> Op:
    """KEYS and ARGV of one `_TRANSITION_LUA` call; `hold` is (worker, TTL in seconds)."""
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
    if hold is not None:
        spec["hold"] = {"worker": hold[0], "ttl_ms": max(1, int(hold[1] * 1000))}
    if after_holder:
        spec["after_holder"] = True
    job_keys = [keys.job(job_id), keys.job_result(job_id), keys.job_message(job_id)]
    zsets = [keys.PENDING_ZSET, keys.WEBHOOK_OUTBOX, keys.QUEUED_ITEMS, keys.QUEUED_JOBS]
    return [*job_keys, *zsets, keys.job_hold(job_id)], [json.dumps(spec), result or b""]


_FROM_NOT_TERMINAL = (JobStatus.QUEUED, JobStatus.RUNNING)


def start_op(
    job_id: str, ttl_s: int, now: float, worker: str, redeliver_after: float, hold_ttl_s: float
) -> Op:
    """Counts a delivery only when no other delivery holds the job: from `queued`, or from
    `running` once the previous holder is gone (died, or let go without an outcome). A duplicate
    message for a job a live worker holds is refused (previous `running`) and counts nothing."""
    fields = {"started_at": now, "worker": worker}
    return _transition(
        job_id, _FROM_NOT_TERMINAL, JobStatus.RUNNING, ttl_s, now, fields,
        count_attempt=True, redeliver_at=now + redeliver_after, hold=(worker, hold_ttl_s),
    )  # fmt: skip


def succeed_op(
    job_id: str, ttl_s: int, now: float, result: bytes, fields: Mapping[str, object]
) -> Op:
    fields = {"finished_at": now, **fields}
    return _transition(
        job_id, (JobStatus.RUNNING,), JobStatus.SUCCEEDED, ttl_s, now, fields, result=result
    )


def cancel_op(job_id: str, ttl_s: int, now: float) -> Op:
    """A running job's items stay counted until its holder stops computing it (`let_go`)."""
    return _transition(
        job_id, _FROM_NOT_TERMINAL, JobStatus.CANCELLED, ttl_s, now, {"finished_at": now},
        after_holder=True,
    )  # fmt: skip


def fail_op(job_id: str, ttl_s: int, now: float, code: str, message: str) -> Op:
    fields = {"finished_at": now, "error_code": code, "error_message": message}
    return _transition(job_id, _FROM_NOT_TERMINAL, JobStatus.FAILED, ttl_s, now, fields)


def _transition_result(op: Op, reply: list[Any]) -> Transition:
    applied, previous, attempts, webhook = reply
    prev = JobStatus(previous.decode()) if previous else None
    job_id = json.loads(op[1][0])["job"]
    return Transition(bool(applied), prev, int(attempts), bool(webhook), job_id)


class JobStore:
    """Blocking store, for worker threads. `hold_ttl_s`: how long a worker's hold on a job lasts
    without renewal (its heartbeat's liveness TTL)."""

    def __init__(
        self,
        client: redis.Redis,
        ttl_s: int,
        redeliver_after_s: float = 300,
        hold_ttl_s: float = 6.0,
    ) -> None:
        self._r = client
        self.ttl_s = ttl_s
        self.redeliver_after_s = redeliver_after_s
        self.hold_ttl_s = hold_ttl_s
        self._script = client.register_script(_RELEASE_LUA + _TRANSITION_LUA)
        self._let_go = client.register_script(_RELEASE_LUA + _LET_GO_LUA)
        self._renew_hold = client.register_script(RENEW_IF_HOLDER)
        self._webhook_record = client.register_script(_WEBHOOK_RECORD_LUA)

    def _apply(self, op: Op) -> Transition:
        return _transition_result(op, self._script(keys=op[0], args=op[1]))

    @property
    def redis(self) -> redis.Redis:
        """For readers of records the store does not own (the webhook sender's batches)."""
        return self._r

    def get(self, job_id: str) -> StoredJob | None:
        raw = self._r.hgetall(keys.job(job_id))
        return decode_job(raw) if raw else None

    def start(self, job_id: str, now: float, worker: str = "") -> Transition:
        op = start_op(job_id, self.ttl_s, now, worker, self.redeliver_after_s, self.hold_ttl_s)
        return self._apply(op)

    def renew_holds(self, job_ids: Sequence[str], worker: str) -> None:
        """The holder's heartbeat: its holds live on while it works on the jobs."""
        ttl_ms = max(1, int(self.hold_ttl_s * 1000))
        with self._r.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                self._renew_hold(keys=[keys.job_hold(job_id)], args=[worker, ttl_ms], client=pipe)
            pipe.execute()

    def let_go(self, job_id: str, worker: str) -> bool:
        """`worker` stops working on the job without storing an outcome ('' for a sweeper that
        holds nothing); True when that settled a terminal job (its quota counts freed)."""
        job_keys = [keys.job(job_id), keys.job_hold(job_id), keys.PENDING_ZSET]
        quota_keys = [keys.QUEUED_ITEMS, keys.QUEUED_JOBS]
        return bool(self._let_go(keys=[*job_keys, *quota_keys], args=[job_id, worker]))

    def ended(self, job_ids: Sequence[str]) -> set[str]:
        """Those of `job_ids` no longer queued or running (cancelled, finished by another
        delivery, or gone): computing them further is wasted."""
        with self._r.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hget(keys.job(job_id), "status")
            statuses = pipe.execute()
        unfinished = {JobStatus.QUEUED.value, JobStatus.RUNNING.value}
        return {
            job_id
            for job_id, status in zip(job_ids, statuses, strict=True)
            if status is None or text(status) not in unfinished
        }

    def redelivery_state(self, job_id: str) -> tuple[JobStatus | None, bool, bytes | None]:
        """What the sweeper decides on: the job's status, whether a live worker holds it, and
        the copy of its message (None once terminal)."""
        with self._r.pipeline(transaction=False) as pipe:
            pipe.hget(keys.job(job_id), "status")
            pipe.exists(keys.job_hold(job_id))
            pipe.get(keys.job_message(job_id))
            status, held, message = pipe.execute()
        return (
            JobStatus(text(status)) if status else None,
            bool(held),
            _bytes(message),
        )

    def take_sweep(self, worker: str, interval_ms: int) -> bool:
        """This interval's redelivery sweep for `worker`, unless another worker has it."""
        return bool(self._r.set(keys.SWEEP_LOCK, worker, nx=True, px=interval_ms))

    def dead_letter(self, entry: str, keep: int) -> None:
        """Add `entry` to the dead-letter list, which keeps the `keep` most recent."""
        with self._r.pipeline(transaction=True) as pipe:
            pipe.lpush(keys.DEAD_LETTER, entry)
            pipe.ltrim(keys.DEAD_LETTER, 0, keep - 1)
            pipe.execute()

    def get_result(self, job_id: str) -> bytes | None:
        return _bytes(self._r.get(keys.job_result(job_id)))

    def overdue(self, now: float, limit: int) -> list[str]:
        """Unfinished jobs whose redelivery deadline has passed."""
        ids = self._r.zrangebyscore(keys.PENDING_ZSET, "-inf", now, start=0, num=limit)
        return [i.decode() if isinstance(i, bytes) else str(i) for i in ids]

    def reschedule(self, job_id: str, at: float) -> None:
        self._r.zadd(keys.PENDING_ZSET, {job_id: at}, xx=True)

    def forget(self, job_id: str) -> None:
        self._r.zrem(keys.PENDING_ZSET, job_id)

    def record_webhook(
        self, job_id: str, fields: Mapping[str, object], next_attempt_at: float | None, keep_s: int
    ) -> bool:
        """The outcome of one delivery attempt; `next_attempt_at` None ends the delivery. The
        job's record and result live at least `keep_s` more (never less than they had), so a
        retry scheduled past their TTL still finds them; False: the job is gone, and so is its
        delivery."""
        args: list[str] = [job_id, "" if next_attempt_at is None else repr(next_attempt_at)]
        args.append(str(keep_s))
        for name, value in fields.items():
            args += [name, "" if value is None else str(value)]
        job_keys = [keys.job(job_id), keys.WEBHOOK_OUTBOX, keys.job_result(job_id)]
        return bool(self._webhook_record(keys=job_keys, args=args))

    def record_batch_webhook(
        self,
        batch_id: str,
        fields: Mapping[str, object],
        next_attempt_at: float | None,
        keep_s: int,
    ) -> bool:
        """`record_webhook` for a batch's delivery: the same outbox and delivery log, on the
        batch's record (written by the gateway's batch runner; only these fields here)."""
        args = [batch_id, "" if next_attempt_at is None else repr(next_attempt_at), str(keep_s)]
        for name, value in fields.items():
            args += [name, "" if value is None else str(value)]
        record = keys.batch(batch_id)
        return bool(self._webhook_record(keys=[record, keys.WEBHOOK_OUTBOX, record], args=args))

    def succeed(
        self, job_id: str, now: float, result: bytes, fields: Mapping[str, object]
    ) -> Transition:
        return self._apply(succeed_op(job_id, self.ttl_s, now, result, fields))

    def fail(self, job_id: str, now: float, code: str, message: str) -> Transition:
        return self._apply(fail_op(job_id, self.ttl_s, now, code, message))


class AsyncJobStore:
    """Non-blocking store, for the gateway."""

    def __init__(
        self,
        client: aioredis.Redis,
        ttl_s: int,
        redeliver_after_s: float = 300,
        replica_acks: int = 0,
        ack_timeout_ms: int = 1000,
    ) -> None:
        self._r = client
        self.ttl_s = ttl_s
        self.redeliver_after_s = redeliver_after_s
        self.replica_acks = replica_acks
        self.ack_timeout_ms = ack_timeout_ms
        self._script = client.register_script(_RELEASE_LUA + _TRANSITION_LUA)
        self._create = client.register_script(_CREATE_LUA)

    async def _apply(self, op: Op) -> Transition:
        return _transition_result(op, await self._script(keys=op[0], args=op[1]))

    async def create(
        self,
        job: StoredJob,
        message: bytes,
        queue: str,
        max_queued_items: int | None = None,
        max_model_jobs: int | None = None,
        priority: int = 0,
    ) -> tuple[str, int] | None:
        """The record, a copy of its queue message, its redelivery deadline and the message on
        `queue`, in one step (if the broker loses the message, the sweeper publishes the copy
        again). With limits, the job's items are reserved against its tenant's item quota, and
        the job against the tenant's share of its model's queue, in the same step; if either is
        full, nothing is created and the answer names it (`items` or `jobs`) with the tenant's
        count there. A job that exists already is left as it is (a batch resuming its chunks
        after a gateway restart submits them again under the same ids).

        With `replica_acks`, the step is followed by `WAIT` on the same connection (one
        pipeline), and the job counts as created only once that many replicas hold it: else
        503 `QUEUE_UNAVAILABLE`, and the client retries."""
        tenant = job.tenant or ""
        items = bool(tenant) and max_queued_items is not None
        share = keys.tenant_model_field(tenant, job.model) if tenant and max_model_jobs else ""
        update: dict[str, object] = {"quota_job": share or None}
        if items:
            update["quota_items"] = job.n_items
        job = job.model_copy(update=update)
        script_keys = [
            keys.job(job.id), keys.job_message(job.id), keys.PENDING_ZSET,
            keys.QUEUED_ITEMS, keys.QUEUED_JOBS, keys.queue_list(queue, priority),
        ]  # fmt: skip
        args: list[Any] = [
            job.id,
            message,
            self.ttl_s,
            repr(job.created_at + self.redeliver_after_s),
            tenant if items else "",
            job.n_items,
            max_queued_items or 0,
            share,
            max_model_jobs or 0,
            envelope(message, job.id, queue, priority),
            *(part for field in encode_job(job).items() for part in field),
        ]  # fmt: skip
        if not self.replica_acks:
            reply = await self._create(keys=script_keys, args=args)
        else:
            reply = await self._create_replicated(script_keys, args)
        return None if int(reply[0]) else (text(reply[2]), int(reply[1]))

    async def _create_replicated(self, script_keys: list[str], args: list[Any]) -> Any:
        """The create script, then `WAIT` for its replicas, in one pipeline (`WAIT` counts the
        writes of its own connection only)."""
        try:
            reply, acked = await self._create_and_wait(script_keys, args)
        except redis.exceptions.NoScriptError:  # a primary new since the last submit
            await self._r.script_load(_CREATE_LUA)
            reply, acked = await self._create_and_wait(script_keys, args)
        if int(acked) < self.replica_acks:
            raise QueueUnavailable(
                f"{acked} of {self.replica_acks} Redis replicas acknowledged the job within "
                f"{self.ack_timeout_ms} ms; retry shortly"
            )
        return reply

    async def _create_and_wait(self, script_keys: list[str], args: list[Any]) -> list[Any]:
        """EVALSHA, not the script object: its pipelines ask Redis whether the script exists
        first, a round trip more per submit."""
        async with self._r.pipeline(transaction=False) as pipe:
            pipe.evalsha(self._create.sha, len(script_keys), *script_keys, *args)
            pipe.execute_command("WAIT", self.replica_acks, self.ack_timeout_ms)
            replies: list[Any] = await pipe.execute()
        return replies

    async def get(self, job_id: str) -> StoredJob | None:
        raw = await self._r.hgetall(keys.job(job_id))
        return decode_job(raw) if raw else None

    async def get_with_result(self, job_id: str) -> tuple[StoredJob | None, bytes | None]:
        """The record and, once it succeeded, its vectors, in one round trip: a poll's answer."""
        async with self._r.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.job(job_id))
            pipe.get(keys.job_result(job_id))
            raw, value = await pipe.execute()
        job = decode_job(raw) if raw else None
        if job is None or job.status != JobStatus.SUCCEEDED:
            return job, None
        return job, _bytes(value)

    async def cancel(self, job_id: str, now: float) -> Transition:
        return await self._apply(cancel_op(job_id, self.ttl_s, now))

    async def discard(self, job_id: str) -> None:
        """Drop an ended job whose result has been taken elsewhere (a batch chunk's, once in its
        output part): a large batch must not leave its vectors in Redis for `ttl_s`. Only
        ended jobs: a live one would lose its record under its worker."""
        job = await self.get(job_id)
        if job is not None and job.status.terminal:
            await self._r.delete(keys.job(job_id), keys.job_result(job_id))
