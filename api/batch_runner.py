"""Drives batches to the end: every gateway runs one `BatchRunner`, and each open batch is driven
by the one gateway holding its lease.

A batch's lines run as chunk jobs through the same path as every job (routing by adapter,
queues, workers, batcher), at bulk priority and at most `bulk.chunks_in_flight` at a time per
batch, so a batch neither floods Redis with its texts nor starves interactive work. The driver's
state is the batch record (status, counters) and its chunk hash (`keys.batch_chunks`: chunk ->
`queued` | `done`); chunk job ids are derived from the batch id and chunk index. So when a
gateway dies its lease lapses and another gateway picks the batch up where it was: a chunk
already queued is not queued again (`AsyncJobStore.create` leaves an existing job alone), a
chunk whose output part was written is not written again (the part is per chunk, and `done`
plus the counters move in one Lua step only once), and a worker killed mid-chunk is the job
system's business (redelivery), as for any job.

Blocking work (reading and writing parts, assembling files) runs on worker threads; the event
loop only reads and writes Redis. The runner's loop also sweeps every tenant's expired files
(`FileRecords.sweep_expired`) every `bulk.file_sweep_s`: files are the batches' inputs and outputs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import time
from typing import Any

from anyio import to_thread

from api.auth import LOCAL_TENANT, Caller
from api.background import cancel_and_wait
from api.batch_input import Split, split_input
from api.batch_output import ChunkOutcome, assemble, read_chunk, write_chunk, write_chunk_errors
from api.errors import error_for_code
from api.state import Gateway
from common import keys
from common.batch_record import TERMINAL, BatchError, StoredBatch
from common.errors import (
    BatchCancelled,
    BatchExpired,
    FileNotFound,
    InvalidFile,
    LoraqError,
    QueueFull,
)
from common.job_view import vectors
from common.redis_values import RELEASE_IF_HOLDER, RENEW_IF_HOLDER
from common.schemas import EncodeMessage, JobStatus, StoredJob
from common.settings import AuthMode

log = logging.getLogger(__name__)

#: Batches one gateway drives at once; the rest wait for a gateway with room.
MAX_DRIVEN = 64

# KEYS: chunk hash, batch record. ARGV: chunk, completed, failed, width ('' = unchanged).
# Marks a chunk done and counts its lines, once.
_DONE_LUA = """
if redis.call('HGET', KEYS[1], ARGV[1]) == 'done' then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], 'done')
redis.call('HINCRBY', KEYS[2], 'completed', ARGV[2])
redis.call('HINCRBY', KEYS[2], 'failed', ARGV[3])
if ARGV[4] ~= '' then redis.call('HSETNX', KEYS[2], 'dims', ARGV[4]) end
return 1
"""


def chunk_job_id(batch_id: str, chunk: int) -> str:
    return f"job_b{batch_id.removeprefix('batch_')}_{chunk}"


class BatchRunner:
    def __init__(self, gw: Gateway) -> None:
        self._gw = gw
        self._id = "gw-" + secrets.token_hex(6)
        self._settings = gw.settings.bulk
        self._ttl_ms = int(self._settings.lease_ttl_s * 1000)
        self._renew = gw.redis.register_script(RENEW_IF_HOLDER)
        self._release = gw.redis.register_script(RELEASE_IF_HOLDER)
        self._done = gw.redis.register_script(_DONE_LUA)
        self._driving: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._swept_at = -math.inf
        gw.waiter.on_done.append(self._job_done)

    def _job_done(self, job_id: str) -> None:
        if job_id.startswith("job_b"):
            self._wake.set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="loraq-batch-runner")

    async def stop(self) -> None:
        for task in (self._task, *self._driving.values()):
            await cancel_and_wait(task)
        for batch_id in list(self._driving):
            with contextlib.suppress(Exception):
                await self._release(keys=[keys.batch_lease(batch_id)], args=[self._id])

    async def _loop(self) -> None:
        while True:
            try:
                await self._tick()
            except Exception:
                log.exception("batch runner tick failed; trying again")
            if time.monotonic() - self._swept_at >= self._settings.file_sweep_s:
                self._swept_at = time.monotonic()
                try:
                    await self._gw.files.sweep_expired()
                except Exception:
                    log.exception("sweeping expired files failed; trying again later")
            await asyncio.sleep(self._settings.poll_s)

    async def _tick(self) -> None:
        for batch_id, task in list(self._driving.items()):
            if task.done():
                del self._driving[batch_id]
            elif not await self._renew(
                keys=[keys.batch_lease(batch_id)], args=[self._id, self._ttl_ms]
            ):
                log.warning("lost the lease on %s; another gateway drives it now", batch_id)
                task.cancel()
                del self._driving[batch_id]
        for batch_id in await self._gw.batches.open_batches(MAX_DRIVEN * 4):
            if batch_id in self._driving or len(self._driving) >= MAX_DRIVEN:
                continue
            lease = keys.batch_lease(batch_id)
            if await self._gw.redis.set(lease, self._id, nx=True, px=self._ttl_ms):
                self._driving[batch_id] = asyncio.create_task(
                    self._drive(batch_id), name=f"loraq-batch-{batch_id}"
                )

    async def _drive(self, batch_id: str) -> None:
        try:
            await _Driver(self._gw, batch_id, self._done, self._wake).run()
        except asyncio.CancelledError:
            raise
        except Exception:
            # The lease is kept until it lapses: the batch is tried again then, not in a loop.
            log.exception("driving %s failed; it is retried when its lease lapses", batch_id)
            return
        await self._release(keys=[keys.batch_lease(batch_id)], args=[self._id])


class _Driver:
    def __init__(self, gw: Gateway, batch_id: str, done: Any, wake: asyncio.Event) -> None:
        self.gw, self.batch_id = gw, batch_id
        self.settings = gw.settings
        self.objects = gw.objects
        self._done, self._wake = done, wake

    async def run(self) -> None:
        stored = await self.gw.batches.load(self.batch_id)
        if stored is None or stored.batch.status in TERMINAL:
            return
        who = self._caller(stored)
        if who is None:
            await self._fail(
                stored, "INVALID_API_KEY", "the API key that created the batch is gone"
            )
            return
        unsplit = stored.batch.in_progress_at is None  # a cancel can come before the split
        if stored.batch.status == "validating" or (stored.batch.status == "cancelling" and unsplit):
            stored = await self._validate(stored, who)
            if stored is None:
                return
        while True:
            stored = await self.gw.batches.load(self.batch_id)
            if stored is None:
                return
            status = stored.batch.status
            if status == "cancelling":
                await self._stop(
                    stored,
                    "cancelled",
                    BatchCancelled("the batch was cancelled before this line ran"),
                )
                return
            if time.time() >= (stored.batch.expires_at or 0) and status == "in_progress":
                await self._stop(
                    stored,
                    "expired",
                    BatchExpired("the batch expired before this line ran"),
                )
                return
            if status == "finalizing":
                await self._finalize(stored, "completed", stop_errors=False)
                return
            if status != "in_progress":
                return
            if await self._step(stored, who):
                now = {"finalizing_at": int(time.time())}
                await self.gw.batches.move(
                    self.batch_id, stored.tenant, ("in_progress",), "finalizing", now
                )
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.bulk.poll_s)

    def _caller(self, stored: StoredBatch) -> Caller | None:
        auth = self.settings.auth
        if auth.mode is AuthMode.DISABLED:
            return Caller(LOCAL_TENANT, None)
        for key in auth.keys:
            if key.sha256 == stored.key and key.tenant == stored.tenant:
                return Caller(key.tenant, key)
        return None

    async def _validate(self, stored: StoredBatch, who: Caller) -> StoredBatch | None:
        try:
            record = await self.gw.files.get(stored.tenant, stored.batch.input_file_id)
            input_key = record.key
            registry = await self.gw.adapters.snapshot(who)
            split: Split = await to_thread.run_sync(
                split_input, self.objects, input_key, self.batch_id, self.settings, who, registry
            )
        except (InvalidFile, FileNotFound) as exc:
            await self._fail(stored, exc.code, exc.message)
            return None
        fields = {"total": split.lines, "failed": split.invalid, "chunks": split.chunks}
        found = await self.gw.batches.move(
            self.batch_id, stored.tenant, ("validating",), "in_progress",
            {**fields, "in_progress_at": int(time.time())},
        )  # fmt: skip
        if found != "validating":
            await self.gw.batches.update(self.batch_id, fields)
        await self._prefetch(split)
        return await self.gw.batches.load(self.batch_id)

    async def _prefetch(self, split: Split) -> None:
        """Every adapter the batch names, to the worker its chunks will go to, before they do:
        a slow source (the Hub, S3) is fetched while earlier chunks run."""
        for model, lora_id in sorted(split.adapters):
            queue = self.gw.cluster.affinity_queue(model, lora_id)
            try:
                await self.gw.publisher.prefetch(lora_id, queue)
            except Exception as exc:  # a hint: the chunks load it anyway
                log.info("prefetch of %s not sent (%r)", lora_id, exc)

    async def _step(self, stored: StoredBatch, who: Caller) -> bool:
        """Collect finished chunks and queue more; True once every chunk is done."""
        states = await self._chunk_states()
        queued = [k for k, state in states.items() if state == "queued"]
        for chunk in queued:
            if await self._collect(stored, chunk):
                states[chunk] = "done"
        in_flight = sum(1 for state in states.values() if state == "queued")
        todo = (k for k in range(stored.chunks) if k not in states)
        for chunk in todo:
            if in_flight >= self.settings.bulk.chunks_in_flight:
                break
            if not await self._queue(stored, who, chunk):
                break
            states[chunk] = "queued"
            in_flight += 1
        return len(states) == stored.chunks and all(s == "done" for s in states.values())

    async def _chunk_states(self) -> dict[int, str]:
        raw = await self.gw.redis.hgetall(keys.batch_chunks(self.batch_id))
        return {int(k): v.decode() if isinstance(v, bytes) else str(v) for k, v in raw.items()}

    async def _queue(self, stored: StoredBatch, who: Caller, chunk: int) -> bool:
        """One chunk as a job; False when the queue or the tenant's quota is full (try later)."""
        header, entries = await to_thread.run_sync(read_chunk, self.objects, self.batch_id, chunk)
        model, lora_id = header["model"], header["lora_id"]
        texts = [t for e in entries for t in e["texts"]]
        job_id = chunk_job_id(self.batch_id, chunk)
        now = time.time()
        job = StoredJob(
            id=job_id, status=JobStatus.QUEUED, model=model, lora_id=lora_id,
            n_items=len(texts), created_at=now, tenant=stored.tenant,
        )  # fmt: skip
        message = EncodeMessage.model_construct(
            job_id=job_id, model=model, lora_id=lora_id, texts=texts, normalize=None,
            truncate=True, enqueued_at=now, token_ids=None, bulk=True,
        )  # fmt: skip
        try:
            self.gw.cluster.admit(model)
        except QueueFull:
            return False
        max_items = who.key.max_queued_items if who.key else None
        share = self.settings.limits.tenant_max_jobs() if who.key else None
        route = self.gw.cluster.route(model, lora_id, job_id)
        await self.gw.redis.hset(keys.batch_chunks(self.batch_id), str(chunk), "queued")
        try:
            refused = await self.gw.store.create(
                job, message.model_dump_json().encode(), route.queue, max_items, share,
                priority=keys.BULK_PRIORITY,
            )  # fmt: skip
        except BaseException:
            self.gw.cluster.completed(job_id)
            await self.gw.redis.hdel(keys.batch_chunks(self.batch_id), str(chunk))
            raise
        if refused is not None:
            self.gw.cluster.completed(job_id)
            await self.gw.redis.hdel(keys.batch_chunks(self.batch_id), str(chunk))
            return False
        self.gw.cluster.published(model, job_id)
        return True

    async def _collect(self, stored: StoredBatch, chunk: int) -> bool:
        """A finished chunk's lines into its parts, counted once; True if the chunk is done."""
        job_id = chunk_job_id(self.batch_id, chunk)
        job, result = await self.gw.store.get_with_result(job_id)
        if job is None:  # recorded as queued, but its create never happened: queue it again
            await self.gw.redis.hdel(keys.batch_chunks(self.batch_id), str(chunk))
            return False
        if not job.status.terminal:
            return False
        _, entries = await to_thread.run_sync(read_chunk, self.objects, self.batch_id, chunk)
        outcome = await self._answer(stored, chunk, entries, job, result)
        width = "" if outcome.dims is None else outcome.dims
        await self._done(
            keys=[keys.batch_chunks(self.batch_id), keys.batch(self.batch_id)],
            args=[chunk, outcome.completed, outcome.failed, width],
        )
        await self.gw.store.discard(job_id)
        return True

    async def _answer(
        self, stored: StoredBatch, chunk: int, entries: list[dict[str, Any]], job: StoredJob,
        result: bytes | None,
    ) -> ChunkOutcome:  # fmt: skip
        if job.status is JobStatus.SUCCEEDED and result is not None:
            matrix = vectors(job, result)
            return await to_thread.run_sync(
                write_chunk, self.objects, self.batch_id, chunk, entries, matrix,
                job.n_tokens or 0, stored.batch.output_format, stored.dims,
            )  # fmt: skip
        error = error_for_code(
            job.error_code or "ENCODE_FAILED", job.error_message or f"job {job.status}"
        )
        failed = await to_thread.run_sync(
            write_chunk_errors, self.objects, self.batch_id, chunk, entries, error
        )
        return ChunkOutcome(0, failed, None)

    async def _stop(self, stored: StoredBatch, status: str, reason: LoraqError) -> None:
        """Cancelled or expired: chunks in flight are cancelled (what already finished is kept),
        every line not answered goes to the error file, then the files as they stand."""
        states = await self._chunk_states()
        for chunk, state in states.items():
            if state != "queued":
                continue
            job_id = chunk_job_id(self.batch_id, chunk)
            if (await self.gw.store.cancel(job_id, time.time())).applied:
                await self.gw.store.discard(job_id)
            else:  # it ended before the cancel: its answers are kept
                await self._collect(stored, chunk)
        states = await self._chunk_states()
        left = [k for k in range(stored.chunks) if states.get(k) != "done"]
        failed = 0
        for chunk in left:
            _, entries = await to_thread.run_sync(read_chunk, self.objects, self.batch_id, chunk)
            failed += await to_thread.run_sync(
                write_chunk_errors, self.objects, self.batch_id, f"stop-{chunk}", entries, reason
            )
        if failed:
            await self.gw.redis.hincrby(keys.batch(self.batch_id), "failed", failed)
        await self._finalize(await self._reload(), status, stop_errors=bool(left))

    async def _reload(self) -> StoredBatch:
        stored = await self.gw.batches.load(self.batch_id)
        assert stored is not None  # records outlive their open batches
        return stored

    async def _finalize(self, stored: StoredBatch, status: str, stop_errors: bool) -> None:
        assembled = await to_thread.run_sync(
            assemble, self.objects, self.batch_id, stored.chunks, stored.batch.output_format,
            stored.dims, stop_errors,
        )  # fmt: skip
        fields: dict[str, object] = {f"{status}_at": int(time.time())}
        names = {"output": ("output_file_id", "output"), "errors": ("error_file_id", "errors"),
                 "ids": ("ids_file_id", "ids")}  # fmt: skip
        for part, (field, name) in names.items():
            produced = getattr(assembled, part)
            if produced is not None:
                key, size = produced
                filename = f"{self.batch_id}_{name}{_suffix(key)}"
                record = await self.gw.files.register(
                    stored.tenant, filename, "batch_output", key, size
                )
                fields[field] = record.id
        allowed = ("in_progress", "finalizing", "cancelling")
        await self._end(stored, allowed, status, fields)
        await self.gw.redis.delete(keys.batch_chunks(self.batch_id))

    async def _fail(self, stored: StoredBatch, code: str, message: str) -> None:
        error = BatchError(code=code, message=message)
        fields: dict[str, object] = {"failed_at": int(time.time()), "errors": [error.model_dump()]}
        await self._end(stored, ("validating", "cancelling"), "failed", fields)

    async def _end(
        self, stored: StoredBatch, allowed: tuple[str, ...], status: str, fields: dict[str, object]
    ) -> None:
        """The terminal move (which queues the webhook's delivery, if it asked for this end),
        a nudge to the webhook worker so it need not wait for its sweep, then the parts go."""
        found = await self.gw.batches.move(self.batch_id, stored.tenant, allowed, status, fields)
        events = (stored.webhook_events or "").split()
        if found in allowed and status in events:
            try:
                await self.gw.publisher.webhook(self.batch_id)
            except Exception as exc:  # the outbox sweep delivers it anyway
                log.warning("could not queue the webhook of %s (%r)", self.batch_id, exc)
        await to_thread.run_sync(self.objects.delete_prefix, f"batches/{self.batch_id}")


def _suffix(key: str) -> str:
    return key[key.rindex(".") :] if "." in key.rsplit("/", 1)[-1] else ""
