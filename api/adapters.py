"""The adapter registry's records: which adapters a tenant holds, their immutable revisions, who
they are shared with, which are pinned, and which revision a job gets.

An adapter `org/name` belongs to the tenant `org` (its namespace). Its record
(`keys.adapter`) names its latest revision; each revision is the content hash of its files
(`common.adapter_check.content_hash`, what results echo as `adapter_hash`), described in
`keys.adapter_revisions`. Every key of an org shares the hash tag `{org}`, so the Lua scripts
(`api.adapter_scripts`) keep a record, the org's index and its byte count consistent in one
step, caps included.

Jobs never name a moving target: `resolve` turns `org/name` into `org/name@<latest>` at submit,
and that pinned id is what the queue message carries, so a new revision takes new jobs at once
and jobs already queued run on theirs. Two global keys tell workers what changed: the pinned
adapters' latest revisions (`keys.PINNED_ADAPTERS`) and deleted revisions
(`keys.DELETED_ADAPTERS`, scored by the time of the delete), read on every heartbeat. A deleted
adapter's files stay in the store `adapters.delete_grace_s` (jobs queued before the delete still
run); `sweep` deletes them after that.

Another tenant's adapter answers 404 like a missing one, unless shared with the caller.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass

import redis.asyncio as aioredis
from anyio import CapacityLimiter, to_thread

from api.adapter_scripts import ADD_REVISION_LUA, DELETE_LUA, PIN_LUA
from api.auth import Caller
from common import keys
from common.adapters import revision_id, revision_key, split_revision
from common.errors import (
    AdapterBaseMismatch,
    AdapterCheckUnavailable,
    AdapterForbidden,
    AdapterNotFound,
    AdapterStorageFull,
    InvalidInput,
    TooManyAdapters,
    TooManyPinned,
)
from common.model_files import BaseDescription, describe_base
from common.object_store import ObjectStore
from common.redis_values import text, texts
from common.settings import Settings, resolve_model_path

#: Object-store calls and imports (Hub, S3 downloads) at once per gateway process.
STORE_THREADS = 4
#: Uploads checked at once per gateway process: each holds its files and their float32 copies.
CHECK_THREADS = 2


@dataclass(frozen=True)
class Revision:
    hash: str
    created_at: int
    bytes: int
    rank: int
    targets: list[str]
    #: The order of uploads, counted per adapter by the script that records them: two uploads
    #: in one second have the same `created_at`.
    seq: int = 0


@dataclass(frozen=True)
class AdapterRecord:
    name: str
    owner: str
    model: str
    created_at: int
    updated_at: int
    latest: str
    pinned: bool
    shared: list[str]
    jobs: int
    loads: int
    bytes: int
    revisions: list[Revision]

    @property
    def current(self) -> Revision:
        return next(r for r in self.revisions if r.hash == self.latest)


def org_of(name: str) -> str:
    return name.partition("/")[0]


def not_found(name: str) -> AdapterNotFound:
    """Missing and another tenant's answer alike."""
    return AdapterNotFound(f"adapter {name[:200]!r} not found")


def check_namespace(who: Caller, name: str) -> None:
    """A tenant writes into its own namespace only (operators' keys anywhere): a static rule,
    so the refusal tells nothing of what exists."""
    if "/" not in name:
        raise InvalidInput(f"name an uploaded adapter '<org>/<name>', not {name[:200]!r}")
    if not who.admin and org_of(name) != who.tenant:
        raise AdapterForbidden(
            f"this API key uploads into '{who.tenant}/...' only, not {name[:200]!r}"
        )


class AdapterRegistry:
    def __init__(self, client: aioredis.Redis, objects: ObjectStore, settings: Settings) -> None:
        self._redis = client
        self.objects = objects
        self._models = settings.models
        self._settings = settings.adapters
        self.limiter = CapacityLimiter(STORE_THREADS)
        self.check_limiter = CapacityLimiter(CHECK_THREADS)
        self._bases: dict[str, BaseDescription] = {}
        self._add = client.register_script(ADD_REVISION_LUA)
        self._delete = client.register_script(DELETE_LUA)
        self._pin = client.register_script(PIN_LUA)

    async def base(self, model: str) -> BaseDescription:
        """The model as uploads are checked against it, read from its files once."""
        if model not in self._bases:
            try:
                path = resolve_model_path(self._models[model])
                self._bases[model] = await to_thread.run_sync(
                    describe_base, model, path, limiter=self.check_limiter
                )
            except (OSError, ValueError, KeyError, ImportError) as exc:
                raise AdapterCheckUnavailable(
                    f"this gateway has no files of {model!r} to check adapters against"
                ) from exc
        return self._bases[model]

    async def load(self, name: str) -> AdapterRecord | None:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.adapter(name))
            pipe.hgetall(keys.adapter_revisions(name))
            raw, revs = await pipe.execute()
        if not raw:
            return None
        fields = {text(k): text(v) for k, v in raw.items()}
        revisions = sorted(
            (Revision(hash=text(h), **json.loads(v)) for h, v in revs.items()),
            key=lambda r: (r.seq, r.created_at, r.hash),
        )
        return AdapterRecord(
            name=fields["name"], owner=fields["owner"], model=fields["model"],
            created_at=int(fields["created_at"]), updated_at=int(fields["updated_at"]),
            latest=fields["latest"], pinned=fields["pinned"] == "1",
            shared=fields["shared"].split(), jobs=int(fields["jobs"]),
            loads=int(fields["loads"]), bytes=int(fields["bytes"]), revisions=revisions,
        )  # fmt: skip

    async def visible(self, who: Caller, name: str) -> AdapterRecord:
        """The adapter if the caller may see and use it: its owner's, shared with it, or any
        for operators' keys; else 404, the same as for a missing one."""
        record = await self.load(name) if "/" in name else None
        if record is None or not (
            who.admin or record.owner == who.tenant or who.tenant in record.shared
        ):
            raise not_found(name)
        return record

    async def owned(self, who: Caller, name: str) -> AdapterRecord:
        """For changes: the owner's (or an operator's); shared with the caller only: 403."""
        record = await self.visible(who, name)
        if not who.admin and record.owner != who.tenant:
            raise AdapterForbidden(f"adapter {name[:200]!r} is shared with this tenant, not its")
        return record

    async def precheck(self, name: str) -> None:
        """Before the upload's bytes are read: an org at its adapter cap may still add
        revisions of what it holds, never a new adapter."""
        org = org_of(name)
        cap = self._settings.max_adapters_per_tenant
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.exists(keys.adapter(name))
            pipe.zcard(keys.org_adapters(org))
            exists, count = await pipe.execute()
        if not exists and count >= cap:
            raise too_many(cap)

    async def add_revision(self, name: str, model: str, revision: Revision) -> bool:
        """Records a revision whose files are in the store; False if it was there already (it
        is the latest again). Over a cap: 429, and the caller deletes the files it wrote."""
        org = org_of(name)
        s = self._settings
        description = {
            "created_at": revision.created_at, "bytes": revision.bytes, "rank": revision.rank,
            "targets": revision.targets,
        }  # fmt: skip
        outcome = text(
            await self._add(
                keys=[
                    keys.adapter(name), keys.adapter_revisions(name), keys.org_adapters(org),
                    keys.org_adapter_bytes(org),
                ],
                args=[
                    name, org, model, revision.hash, json.dumps(description), revision.bytes,
                    s.max_adapters_per_tenant, s.max_bytes_per_tenant, revision.created_at,
                ],
            )
        )  # fmt: skip
        if outcome == "count":
            raise too_many(s.max_adapters_per_tenant)
        if outcome == "bytes":
            raise AdapterStorageFull(
                f"this tenant's adapters would hold over {s.max_bytes_per_tenant} bytes; "
                "delete some to upload more"
            )
        if outcome.startswith("model:"):
            raise InvalidInput(
                f"adapter {name!r} is an adapter of {outcome[6:]!r}; a revision for "
                f"{model!r} needs another name"
            )
        # A re-upload of a deleted revision's files: no worker drops it, no sweep deletes them.
        await self._redis.zrem(keys.DELETED_ADAPTERS, revision_id(name, revision.hash))
        await self._redis.sadd(keys.ADAPTER_ORGS, org)
        if await self._redis.hget(keys.adapter(name), "pinned") in (b"1", "1"):
            await self._redis.hset(keys.PINNED_ADAPTERS, name, pinned_value(revision.hash, model))
        return outcome == "added"

    async def delete(self, who: Caller, name: str) -> None:
        """New jobs are refused from now on; workers drop its revisions on their next heartbeat
        (`keys.DELETED_ADAPTERS`); its files go after `delete_grace_s` (`sweep`)."""
        await self.owned(who, name)
        org = org_of(name)
        found = await self._delete(
            keys=[
                keys.adapter(name), keys.adapter_revisions(name), keys.org_adapters(org),
                keys.org_adapter_bytes(org), keys.org_pinned(org),
            ],
            args=[name],
        )  # fmt: skip
        if not found:
            raise not_found(name)
        shared, revisions = text(found[0]).split(), [text(r) for r in found[1:]]
        now = time.time()
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hdel(keys.PINNED_ADAPTERS, name)
            if revisions:
                pipe.zadd(keys.DELETED_ADAPTERS, {revision_id(name, r): now for r in revisions})
            for tenant in shared:
                pipe.srem(keys.shared_adapters(tenant), name)
            await pipe.execute()
        await self.sweep()

    async def sweep(self) -> None:
        """Deletes the files of revisions deleted over `delete_grace_s` ago (unless uploaded
        again since), and forgets them. Run by whoever uploads or deletes next."""
        cutoff = time.time() - self._settings.delete_grace_s
        due = texts(await self._redis.zrange(keys.DELETED_ADAPTERS, "-inf", cutoff, byscore=True))
        for member in due:
            name, revision = split_revision(member)
            if revision is None or await self._redis.hexists(
                keys.adapter_revisions(name), revision
            ):
                continue
            await self.delete_files(name, revision)
        if due:
            await self._redis.zrem(keys.DELETED_ADAPTERS, *due)

    async def delete_files(self, name: str, revision: str) -> None:
        await to_thread.run_sync(
            self.objects.delete_prefix, revision_key(name, revision), limiter=self.limiter
        )

    async def pin(self, who: Caller, name: str) -> None:
        record = await self.owned(who, name)
        cap = self._settings.max_pinned_per_tenant
        keys_ = [keys.adapter(name), keys.org_pinned(org_of(name))]
        outcome = int(await self._pin(keys=keys_, args=[name, cap]))
        if outcome < 0:
            raise not_found(name)
        if outcome == 0:
            raise TooManyPinned(
                f"this tenant has {cap} adapters pinned, its limit; unpin one to pin another"
            )
        await self._redis.hset(
            keys.PINNED_ADAPTERS, name, pinned_value(record.latest, record.model)
        )

    async def unpin(self, who: Caller, name: str) -> None:
        await self.owned(who, name)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.srem(keys.org_pinned(org_of(name)), name)
            pipe.hset(keys.adapter(name), "pinned", "0")
            pipe.hdel(keys.PINNED_ADAPTERS, name)
            await pipe.execute()

    async def share(self, who: Caller, name: str, tenants: list[str]) -> None:
        """Replaces the tenants the adapter is shared with (they may use it, not change it)."""
        record = await self.owned(who, name)
        wanted = sorted(set(tenants) - {record.owner})
        async with self._redis.pipeline(transaction=False) as pipe:
            for tenant in set(record.shared) - set(wanted):
                pipe.srem(keys.shared_adapters(tenant), name)
            for tenant in wanted:
                pipe.sadd(keys.shared_adapters(tenant), name)
            pipe.hset(keys.adapter(name), "shared", " ".join(wanted))
            await pipe.execute()

    async def names(self, who: Caller) -> list[str]:
        """The caller's own adapters and those shared with it, by name; every org's for
        operators' keys (and everyone with auth disabled)."""
        orgs = texts(await self._redis.smembers(keys.ADAPTER_ORGS)) if who.admin else []
        async with self._redis.pipeline(transaction=False) as pipe:
            for org in {who.tenant, *orgs}:
                pipe.zrange(keys.org_adapters(org), 0, -1)
            pipe.smembers(keys.shared_adapters(who.tenant))
            found = await pipe.execute()
        return sorted({text(n) for group in found for n in group})

    async def resolve(self, who: Caller, lora_id: str, model: str) -> str | None:
        """The revision a job gets: `org/name@<hash>` for a registry adapter the caller may use
        (the latest unless the id pins one), counted as one more job of it; None for an id the
        registry does not hold (an adapter of the adapter directory, the Hub or S3)."""
        name, revision = split_revision(lora_id)
        if "/" not in name:
            return None
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hmget(keys.adapter(name), ["owner", "shared", "latest", "model"])
            pipe.hexists(keys.adapter_revisions(name), revision or "")
            (owner, shared, latest, of_model), has_revision = await pipe.execute()
        if owner is None:
            if revision is not None:
                raise not_found(lora_id)
            return None
        if not (who.admin or text(owner) == who.tenant or who.tenant in text(shared).split()):
            raise not_found(lora_id)
        if revision is not None and not has_revision:
            raise AdapterNotFound(f"adapter {name!r} has no revision {revision!r}")
        if text(of_model) != model:
            raise AdapterBaseMismatch(
                f"adapter {name!r} is an adapter of {text(of_model)!r}, not of {model!r}"
            )
        await self._redis.hincrby(keys.adapter(name), "jobs", 1)
        return revision_id(name, revision or text(latest))

    async def snapshot(self, who: Caller) -> dict[str, Snapshot]:
        """Every registry adapter the caller may use, for a batch, whose lines are checked on a
        worker thread, all against one registry state."""
        found: dict[str, Snapshot] = {}
        for name in await self.names(who):
            record = await self.load(name)
            if record is not None:
                revisions = frozenset(r.hash for r in record.revisions)
                found[name] = Snapshot(record.latest, record.model, revisions)
        return found


@dataclass(frozen=True)
class Snapshot:
    latest: str
    model: str
    revisions: frozenset[str]


def resolve_in(snapshot: Mapping[str, Snapshot], lora_id: str, model: str) -> str | None:
    """`AdapterRegistry.resolve` against a snapshot (a batch's lines)."""
    name, revision = split_revision(lora_id)
    found = snapshot.get(name)
    if found is None:
        if revision is not None:
            raise not_found(lora_id)
        return None
    if revision is not None and revision not in found.revisions:
        raise AdapterNotFound(f"adapter {name!r} has no revision {revision!r}")
    if found.model != model:
        raise AdapterBaseMismatch(
            f"adapter {name!r} is an adapter of {found.model!r}, not of {model!r}"
        )
    return revision_id(name, revision or found.latest)


def pinned_value(revision: str, model: str) -> str:
    """A `keys.PINNED_ADAPTERS` value: the workers of `model` pin `name@revision`."""
    return json.dumps({"revision": revision, "model": model})


def too_many(cap: int) -> TooManyAdapters:
    return TooManyAdapters(f"this tenant holds {cap} adapters, its limit; delete some to add more")


def store_files(objects: ObjectStore, name: str, revision: str, files: Mapping[str, bytes]) -> None:
    """A revision's files into the store (blocking: run on a worker thread)."""
    for file, data in files.items():
        with objects.open_write(revision_key(name, revision, file)) as out:
            out.write(data)
