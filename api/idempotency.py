"""`Idempotency-Key` on submit: a retried request gets the job the first one created.

Per tenant and key, the first request reserves the key (SET NX) with a hash of its body and the
id its job will have, then creates the job. A later request with the same key and the same body
gets that job (200 instead of 202); with another body, 422. Two concurrent requests race on the
SET NX, so exactly one job is created; the loser waits for the winner's job to exist. If the
first request fails in any way (a Redis error too) it leaves no live job, and the reservation
is dropped so a retry can succeed. A reservation whose job never appears (its request failed
where even the release could not reach Redis, or a Redis failover kept the reservation but lost
the job) is taken over by the next request with the key, which creates the job.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from common import keys
from common.errors import IdempotencyKeyReused, InvalidInput
from common.job_store import AsyncJobStore
from common.schemas import StoredJob

log = logging.getLogger(__name__)

MAX_KEY_LENGTH = 255
#: How long a duplicate waits for the first request's job to appear.
WAIT_FOR_FIRST_S = 10.0
#: KEYS: the reservation. ARGV: the job id it must still name, the new record, its TTL.
_TAKE_OVER_LUA = """
local current = redis.call('GET', KEYS[1])
if current and cjson.decode(current).job ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
return 1
"""


def body_digest(canonical_body: str) -> str:
    return hashlib.sha256(canonical_body.encode()).hexdigest()


class Idempotency:
    def __init__(self, client: aioredis.Redis, store: AsyncJobStore, ttl_s: int) -> None:
        self._r = client
        self._store = store
        self._ttl_s = ttl_s
        self._take_over = client.register_script(_TAKE_OVER_LUA)

    def _key(self, tenant: str, idem_key: str) -> str:
        if not idem_key or len(idem_key) > MAX_KEY_LENGTH:
            raise InvalidInput(f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} characters")
        return keys.idempotency(tenant, hashlib.sha256(idem_key.encode()).hexdigest())

    async def reserve(self, tenant: str, idem_key: str, digest: str, job_id: str) -> str | None:
        """None if this request reserved the key (it goes on to create `job_id`); else the id of
        the job the key already stands for."""
        key = self._key(tenant, idem_key)
        record = json.dumps({"body": digest, "job": job_id})
        if await self._r.set(key, record, nx=True, ex=self._ttl_s):
            return None
        raw = await self._r.get(key)
        if raw is None:  # expired or released in between: try once more
            return await self.reserve(tenant, idem_key, digest, job_id)
        first = json.loads(raw)
        if first["body"] != digest:
            raise IdempotencyKeyReused(
                "this Idempotency-Key was used with a different request body"
            )
        return str(first["job"])

    async def take_over(
        self, tenant: str, idem_key: str, digest: str, stale_job: str, job_id: str
    ) -> bool:
        """Reserve the key for `job_id` in place of `stale_job`, whose job never appeared; False
        if another request took it over first."""
        record = json.dumps({"body": digest, "job": job_id})
        key = self._key(tenant, idem_key)
        return bool(await self._take_over(keys=[key], args=[stale_job, record, self._ttl_s]))

    async def release(self, tenant: str, idem_key: str) -> None:
        """Best effort, while the request's own error is on its way to the caller: if Redis
        cannot be asked either, that error is what the caller must see."""
        try:
            await self._r.delete(self._key(tenant, idem_key))
        except RedisError as exc:
            log.warning("could not release an Idempotency-Key of %s: %s", tenant, exc)

    async def first_job(self, job_id: str) -> StoredJob | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT_FOR_FIRST_S
        while (job := await self._store.get(job_id)) is None and loop.time() < deadline:
            await asyncio.sleep(0.05)
        return job
