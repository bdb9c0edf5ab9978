"""Who is calling: API keys (Bearer), tenants, per-key quotas and adapter allowlists.

Keys are configured as SHA-256 digests only, so the settings (a Secret) never hold a usable key,
and are looked up in constant time. Every job belongs to the tenant of the key that submitted it;
another tenant's job answers 404, never 403, so job ids do not leak across tenants. With auth
disabled (local development only) every caller is the tenant `local`.

Quotas live in Redis so they hold across gateway replicas: a token bucket per tenant for the
submit rate (here), and counts of the tenant's unfinished items and of its unfinished jobs per
model (its share of the model's queue), reserved when the job is created and given back by its
terminal transition (both in `common.job_store`).
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

import redis.asyncio as aioredis

from common import keys
from common.adapters import split_revision
from common.errors import AdapterForbidden, QuotaExceeded, Unauthorized
from common.settings import ApiKey, AuthMode, AuthSettings

LOCAL_TENANT = "local"
KEY_PREFIX = "lq_"

# KEYS: bucket hash. ARGV: rate/s, capacity, now, cost. Returns {allowed, seconds to wait}.
_BUCKET_LUA = """
local rate, cap = tonumber(ARGV[1]), tonumber(ARGV[2])
local now, cost = tonumber(ARGV[3]), tonumber(ARGV[4])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or cap
local at = tonumber(state[2]) or now
tokens = math.min(cap, tokens + math.max(0, now - at) * rate)
local allowed = 0
local wait = 0
if tokens >= cost then tokens = tokens - cost; allowed = 1 else wait = (cost - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tokens, 'at', now)
redis.call('EXPIRE', KEYS[1], math.ceil(cap / rate) + 60)
return {allowed, tostring(wait)}
"""


def new_key() -> tuple[str, str]:
    """A fresh API key and the SHA-256 digest to configure."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    return key, digest(key)


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def in_namespace(lora_id: str, tenant: str) -> bool:
    """`<tenant>/<name>`, any revision: the tenant's own registry namespace."""
    org, slash, _ = split_revision(lora_id)[0].partition("/")
    return bool(slash) and org == tenant


@dataclass(frozen=True)
class Caller:
    tenant: str
    key: ApiKey | None  # None with auth disabled

    @property
    def admin(self) -> bool:
        """Sees operations detail (worker ids, every tenant's adapters): admin keys, and every
        caller when auth is disabled (local development)."""
        return self.key is None or self.key.admin

    def allows(self, lora_id: str) -> bool:
        """By the adapter's name: a pinned revision (`org/name@hash`) is allowed as its name."""
        if self.key is None or not self.key.lora_allow:
            return True
        name, _ = split_revision(lora_id)
        return any(fnmatch.fnmatchcase(name, p) for p in self.key.lora_allow)

    def owns(self, lora_id: str) -> bool:
        """Whether the adapter is this caller's to see: in its tenant's registry namespace
        (`<tenant>/...`), or named by its key's allowlist. A key without one may use any
        adapter, but only its namespace's are its own."""
        if self.admin or in_namespace(lora_id, self.tenant):
            return True
        return self.key is not None and bool(self.key.lora_allow) and self.allows(lora_id)

    def may_use(self, lora_id: str | None) -> None:
        """Checked before the adapter is looked up, and answered the same whether it exists or
        not, so an allowlist never tells a key which adapters exist."""
        if lora_id is not None and not self.allows(lora_id):
            raise AdapterForbidden(f"this API key may not use adapter {lora_id!r}")


def identify(auth: AuthSettings, header: str | None) -> Caller:
    if auth.mode is AuthMode.DISABLED:
        return Caller(LOCAL_TENANT, None)
    scheme, _, token = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
    wanted = digest(token.strip())
    for key in auth.keys:
        if hmac.compare_digest(key.sha256, wanted):
            return Caller(key.tenant, key)
    raise Unauthorized("invalid API key")


class RateLimiter:
    def __init__(self, client: aioredis.Redis) -> None:
        self._bucket = client.register_script(_BUCKET_LUA)

    async def admit(self, who: Caller) -> None:
        """Take one submit from the tenant's bucket, or raise 429 with the wait."""
        key = who.key
        if key is None:
            return
        allowed, wait = await self._bucket(
            keys=[keys.rate_bucket(who.tenant)], args=[key.rate_per_s, key.burst, time.time(), 1]
        )
        if not int(allowed):
            raise QuotaExceeded(
                f"submit rate over {key.rate_per_s:g}/s for this API key",
                retry_after=max(1, round(float(wait) + 0.5)),
            )
