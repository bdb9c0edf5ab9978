"""OpenAI's Files API: whose file is which, and where its bytes are.

Redis holds one hash per file (`keys.file`) and a sorted set of each tenant's file ids
(`keys.tenant_files`) for listing and the per-tenant cap; the bytes live in the object store,
reached only from worker threads (a file may be hundreds of MB, and S3 calls block). Uploads go
to `files/<id>`; files a batch produces stay where it wrote them, and the record says where.
A file lives `bulk.retention_s` (its `expires_at`); its record a day longer, so that whoever
next lists or uploads for the tenant, or the gateways' sweep of every tenant's expired files
(`keys.EXPIRING_FILES`, `sweep_expired`), still finds the bytes to delete.

Ids sort by creation time: `file-`, the creation time in milliseconds (8 base62 digits), then
16 random ones, and each member's score is that time. So a list cursor (`after`) says where it
stands by itself: paging on after a file that was deleted meanwhile (a client deleting what it
lists) goes on from the right place, and a cursor never tells whether anyone's file exists.

The record and the set member are separate keys (separate slots on Redis Cluster), so they are
written in an order that makes a member without a record mean "gone for good": the record
first, then the member; on delete, the bytes first (a failed delete can be retried), then the
member and the record.
"""

from __future__ import annotations

import logging
import re
import secrets
import string
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import redis.asyncio as aioredis
from anyio import CapacityLimiter, to_thread
from pydantic import BaseModel, ConfigDict

from common import keys
from common.errors import FileNotFound, TooManyFiles
from common.object_store import ObjectStore
from common.redis_values import text, texts
from common.settings import BulkSettings

log = logging.getLogger(__name__)

FilePurpose = Literal["batch", "batch_output"]
ListOrder = Literal["asc", "desc"]
#: What a tenant may upload (form value -> purpose); batches make `batch_output` files.
UPLOADABLE: dict[str, FilePurpose] = {"batch": "batch"}
MAX_LIST = 10_000
MAX_FILENAME_CHARS = 255
FALLBACK_FILENAME = "file"
#: Object-store calls at once per gateway process (uploads, downloads, deletes): they hold
#: worker threads, which other routes share otherwise.
FILE_THREADS = 8
#: Records outlive their files' retention by this long, so that forgetting an expired file
#: still finds where its bytes are (a batch's files are not under `files/`).
RECORD_GRACE_S = 24 * 3600
#: Members read per round trip while listing.
_SCAN = 1000
#: Expired files one sweep forgets at most (the rest wait for the next).
SWEEP_BATCH = 100
_BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase  # in byte order
_STAMP_DIGITS = 8
_RANDOM_DIGITS = 16
FILE_ID_PATTERN = rf"^file-[0-9A-Za-z]{{{_STAMP_DIGITS + _RANDOM_DIGITS}}}$"
_FILE_ID_RE = re.compile(FILE_ID_PATTERN)
_PATH_SEPARATORS = re.compile(r"[/\\]")

# KEYS: the tenant's set. ARGV: cap, score, id. The cap and the add in one step, so concurrent
# uploads never pass the cap together.
_ADD_CAPPED_LUA = """
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
return 1
"""


class FileObject(BaseModel):
    """A file as OpenAI's API shows it; `expires_at` is when loraq deletes it (retention)."""

    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: FilePurpose
    status: Literal["processed"] = "processed"
    expires_at: int | None = None
    status_details: str | None = None


class FileList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FileObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: Literal[True] = True


class FileRecord(BaseModel):
    """What Redis holds for a file: its public fields, its owner and its object key."""

    model_config = ConfigDict(frozen=True)

    id: str
    tenant: str
    filename: str
    bytes: int
    purpose: FilePurpose
    created_at: int
    expires_at: int
    key: str

    def public(self) -> FileObject:
        return FileObject(
            id=self.id,
            bytes=self.bytes,
            created_at=self.created_at,
            filename=self.filename,
            purpose=self.purpose,
            expires_at=self.expires_at,
        )


def _base62(value: int, digits: int) -> str:
    out = []
    for _ in range(digits):
        value, digit = divmod(value, 62)
        out.append(_BASE62[digit])
    return "".join(reversed(out))


def new_file_id(now_ms: int | None = None) -> str:
    stamp = _base62(time.time_ns() // 1_000_000 if now_ms is None else now_ms, _STAMP_DIGITS)
    return "file-" + stamp + "".join(secrets.choice(_BASE62) for _ in range(_RANDOM_DIGITS))


def created_ms(file_id: str) -> int:
    """The creation time an id carries; its set member's score."""
    value = 0
    for char in file_id[5 : 5 + _STAMP_DIGITS]:
        value = value * 62 + _BASE62.index(char)
    return value


def is_file_id(value: str) -> bool:
    return _FILE_ID_RE.fullmatch(value) is not None


def upload_key(file_id: str) -> str:
    return f"files/{file_id}"


def clean_filename(raw: str) -> str:
    """The last path part, printable characters only, bounded: the name is shown back and used
    as a download name, never as a path here."""
    name = "".join(c for c in _PATH_SEPARATORS.split(raw)[-1] if c.isprintable()).strip()
    name = name[:MAX_FILENAME_CHARS]
    return FALLBACK_FILENAME if name in ("", ".", "..") else name


def not_found(file_id: str) -> FileNotFound:
    """Another tenant's file is as unknown as one that never existed."""
    return FileNotFound(f"file {file_id[:100]!r} not found")


def _decode(raw: Mapping[Any, Any]) -> FileRecord:
    return FileRecord.model_validate({text(k): text(v) for k, v in raw.items()})


class FileRecords:
    """File records over the gateway's async Redis client, and the object store behind them.

    `limiter` bounds the worker threads object-store calls take; the upload and download routes
    run their reads and writes under it too."""

    def __init__(self, client: aioredis.Redis, objects: ObjectStore, bulk: BulkSettings) -> None:
        self._redis = client
        self.objects = objects
        self._bulk = bulk
        self.limiter = CapacityLimiter(FILE_THREADS)
        self._add_capped = client.register_script(_ADD_CAPPED_LUA)

    def _record(
        self, tenant: str, file_id: str, filename: str, purpose: FilePurpose, key: str, nbytes: int
    ) -> FileRecord:
        created = created_ms(file_id) // 1000
        return FileRecord(
            id=file_id,
            tenant=tenant,
            filename=clean_filename(filename),
            bytes=nbytes,
            purpose=purpose,
            created_at=created,
            expires_at=created + self._bulk.retention_s,
            key=key,
        )

    async def _save(self, record: FileRecord) -> None:
        fields = {k: str(v) for k, v in record.model_dump().items()}
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(keys.file(record.id), mapping=fields)  # type: ignore[arg-type]
            pipe.expire(keys.file(record.id), self._bulk.retention_s + RECORD_GRACE_S)
            await pipe.execute()
        await self._redis.zadd(keys.EXPIRING_FILES, {record.id: record.expires_at})

    async def create(
        self, tenant: str, file_id: str, filename: str, purpose: FilePurpose, nbytes: int
    ) -> FileObject:
        """Records an upload already written to `upload_key(file_id)`, within the tenant's cap
        (429 `TOO_MANY_FILES` over it). On any error the caller deletes the bytes."""
        record = self._record(tenant, file_id, filename, purpose, upload_key(file_id), nbytes)
        await self._save(record)
        cap = self._bulk.max_files_per_tenant
        member = [keys.tenant_files(tenant)]
        if not int(await self._add_capped(keys=member, args=[cap, created_ms(file_id), file_id])):
            await self._redis.delete(keys.file(file_id))
            raise too_many_files(cap)
        return record.public()

    async def register(
        self, tenant: str, filename: str, purpose: FilePurpose, key: str, nbytes: int
    ) -> FileObject:
        """Records a file a batch wrote at `key` (its output or error file), outside the cap: a
        finished batch's results are never refused. `nbytes` must be the object's exact size:
        downloads declare it as their Content-Length. From then on the bytes are this class's:
        deleting the file or its expiry deletes them."""
        file_id = new_file_id()
        record = self._record(tenant, file_id, filename, purpose, key, nbytes)
        await self._save(record)
        await self._redis.zadd(keys.tenant_files(tenant), {file_id: created_ms(file_id)})
        return record.public()

    async def get(self, tenant: str, file_id: str) -> FileRecord:
        """The tenant's file, or 404 `FILE_NOT_FOUND` alike for a missing, expired, malformed
        or another tenant's id."""
        raw = await self._redis.hgetall(keys.file(file_id)) if is_file_id(file_id) else None
        record = _decode(raw) if raw else None
        if record is None or record.tenant != tenant or record.expires_at <= time.time():
            raise not_found(file_id)
        return record

    async def count(self, tenant: str) -> int:
        """The tenant's files, for its cap, after forgetting the ones past retention."""
        cutoff = (time.time() - self._bulk.retention_s) * 1000
        expired = await self._redis.zrange(keys.tenant_files(tenant), "-inf", cutoff, byscore=True)
        if expired:
            await self._live(tenant, texts(expired))
        return int(await self._redis.zcard(keys.tenant_files(tenant)))

    async def list_files(
        self,
        tenant: str,
        purpose: FilePurpose | None = None,
        after: str | None = None,
        limit: int = MAX_LIST,
        order: ListOrder = "desc",
    ) -> tuple[list[FileRecord], bool]:
        """One page of the tenant's files, newest first unless `order="asc"`, starting after
        the file `after` (which need not exist any more), and whether more follow."""
        found: list[FileRecord] = []
        cursor, scan = after, min(limit + 1, _SCAN)
        while len(found) <= limit:
            ids = await self._ids_after(tenant, cursor, order == "desc", scan)
            found += [r for r in await self._live(tenant, ids) if purpose in (None, r.purpose)]
            if len(ids) < scan:
                break
            cursor = ids[-1]
        return found[:limit], len(found) > limit

    async def delete(self, tenant: str, file_id: str) -> None:
        """The bytes first: if the store fails, the file is still there to delete again."""
        record = await self.get(tenant, file_id)
        await self.delete_object(record.key)
        await self._redis.zrem(keys.tenant_files(tenant), file_id)
        await self._redis.delete(keys.file(file_id))
        await self._redis.zrem(keys.EXPIRING_FILES, file_id)

    async def sweep_expired(self, now: float | None = None, limit: int = SWEEP_BATCH) -> int:
        """Forgets up to `limit` files of any tenant past retention (bytes, member, record);
        returns how many. Gateways call it now and then: without it a tenant that never
        lists or uploads again would keep its bytes in the store for good. Sweeps of two
        gateways at once delete the same things twice, which is harmless."""
        due = texts(
            await self._redis.zrange(
                keys.EXPIRING_FILES, "-inf", time.time() if now is None else now,
                byscore=True, offset=0, num=limit,
            )
        )  # fmt: skip
        if not due:
            return 0
        async with self._redis.pipeline(transaction=False) as pipe:
            for file_id in due:
                pipe.hgetall(keys.file(file_id))
            raws = await pipe.execute()
        by_tenant: dict[str | None, list[tuple[str, str]]] = {}
        for file_id, raw in zip(due, raws, strict=True):
            record = _decode(raw) if raw else None
            # No record (past its grace, or refused at upload): only the upload key is known.
            if record is None:
                by_tenant.setdefault(None, []).append((file_id, upload_key(file_id)))
            else:
                by_tenant.setdefault(record.tenant, []).append((file_id, record.key))
        for tenant, gone in by_tenant.items():
            await self._forget(tenant, gone)
        return len(due)

    async def delete_object(self, key: str) -> None:
        await to_thread.run_sync(self.objects.delete_prefix, key, limiter=self.limiter)

    async def _ids_after(
        self, tenant: str, cursor: str | None, desc: bool, count: int
    ) -> list[str]:
        """Up to `count` ids in (creation time, id) order past `cursor`. Members of the same
        millisecond as the cursor are few: they are read whole and filtered here."""
        key = keys.tenant_files(tenant)
        if cursor is None:
            bounds = ("+inf", "-inf") if desc else ("-inf", "+inf")
            page = await self._redis.zrange(
                key, *bounds, desc=desc, byscore=True, offset=0, num=count
            )
            return texts(page)
        ms = created_ms(cursor)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zrange(key, ms, ms, byscore=True)
            pipe.zrange(
                key, f"({ms}", "-inf" if desc else "+inf", desc=desc, byscore=True, offset=0,
                num=count,
            )  # fmt: skip
            same, rest = await pipe.execute()
        tied = sorted(
            (m for m in texts(same) if (m < cursor if desc else m > cursor)), reverse=desc
        )
        return (tied + texts(rest))[:count]

    async def _live(self, tenant: str, ids: Sequence[str]) -> list[FileRecord]:
        """The records of `ids` still within retention, in order; the rest are forgotten."""
        if not ids:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for file_id in ids:
                pipe.hgetall(keys.file(file_id))
            raws = await pipe.execute()
        now, live, gone = time.time(), [], []
        for file_id, raw in zip(ids, raws, strict=True):
            record = _decode(raw) if raw else None
            if record is not None and record.expires_at > now:
                live.append(record)
            else:
                gone.append((file_id, record.key if record else upload_key(file_id)))
        if gone:
            await self._forget(tenant, gone)
        return live

    async def _forget(self, tenant: str | None, gone: Sequence[tuple[str, str]]) -> None:
        """Files past retention (or half-registered): their bytes, then member and record.
        `tenant` None: the records are gone; members left in a tenant's set are forgotten
        when that set is next read."""
        for file_id, key in gone:
            try:
                await self.delete_object(key)
            except Exception:  # logged, not retried: nothing would find these bytes again
                log.exception("could not delete the bytes of expired file %s", file_id)
        ids = [file_id for file_id, _ in gone]
        if tenant is not None:
            await self._redis.zrem(keys.tenant_files(tenant), *ids)
        await self._redis.delete(*(keys.file(file_id) for file_id in ids))
        await self._redis.zrem(keys.EXPIRING_FILES, *ids)


def too_many_files(cap: int) -> TooManyFiles:
    return TooManyFiles(f"this tenant holds {cap} files, its limit; delete some to upload more")
