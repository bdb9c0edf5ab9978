"""The webhook outbox: which deliveries are due, and who may run one now.

The outbox is a zset of job ids scored by when their next attempt is due (the job's terminal
transition adds it, `JobStore.record_webhook` moves or removes it). An attempt runs only after
`claim`, one Lua step that checks three things at once:

- the entry is due: a duplicate or early task finds it is not, and does nothing;
- no other attempt holds the delivery's lease: one delivery never runs twice at once. Claiming
  pushes the entry's score to the lease's end, so the sweep does not publish it again while it
  is in flight, and if the attempt is lost with its process the delivery comes due again then;
- the receiver host has fewer than its cap of attempts in flight (a zset of lease tokens scored
  by lease expiry, so a dead process's slots free themselves): above it the delivery is
  deferred (due again shortly), never dropped, and the thread goes to another receiver's.
"""

from __future__ import annotations

from collections.abc import Iterator
from enum import IntEnum
from typing import cast

import redis

from common import keys
from common.redis_values import text

# KEYS: outbox, delivery lease, receiver host's in-flight zset.
# ARGV: job id, now, token, lease end (s), lease length (ms), host cap, deferred until (s).
_CLAIM_LUA = """
local due = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not due or tonumber(due) > tonumber(ARGV[2]) then return 0 end
if redis.call('EXISTS', KEYS[2]) == 1 then return 2 end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[2])
if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[6]) then
  redis.call('ZADD', KEYS[1], 'XX', ARGV[7], ARGV[1])
  return 3
end
redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[5])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[3])
redis.call('PEXPIRE', KEYS[3], ARGV[5])
redis.call('ZADD', KEYS[1], 'XX', ARGV[4], ARGV[1])
return 1
"""

# KEYS: delivery lease, receiver host's in-flight zset. ARGV: token.
_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""


class Claim(IntEnum):
    NOT_DUE = 0
    CLAIMED = 1
    BUSY = 2  # another attempt holds the lease
    DEFERRED = 3  # the receiver host is at its cap


class Outbox:
    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._claim = client.register_script(_CLAIM_LUA)
        self._release = client.register_script(_RELEASE_LUA)

    def due(self, now: float, page: int) -> Iterator[tuple[str, float]]:
        """Every due entry with its score, oldest first, a page at a time; pages continue from
        the last score seen (not an offset), so each costs the same however many came before."""
        low: float | str = "-inf"
        skip = 0
        while True:
            rows = cast(
                list[tuple[bytes | str, float]],
                self._client.zrangebyscore(
                    keys.WEBHOOK_OUTBOX, low, now, start=skip, num=page, withscores=True
                ),
            )
            yield from ((text(member), float(score)) for member, score in rows)
            if len(rows) < page:
                return
            last = float(rows[-1][1])
            ties = sum(1 for _, score in rows if float(score) == last)
            skip = skip + ties if last == low else ties
            low = last

    def claim(
        self,
        job_id: str,
        host: str,
        token: str,
        now: float,
        lease_s: float,
        host_cap: int,
        defer_until: float,
    ) -> Claim:
        reply = self._claim(
            keys=[keys.WEBHOOK_OUTBOX, keys.webhook_lease(job_id), keys.webhook_in_flight(host)],
            args=[
                job_id, repr(now), token, repr(now + lease_s), int(lease_s * 1000), host_cap,
                repr(defer_until),
            ],
        )  # fmt: skip
        return Claim(int(reply))

    def release(self, job_id: str, host: str, token: str) -> None:
        self._release(keys=[keys.webhook_lease(job_id), keys.webhook_in_flight(host)], args=[token])

    def drop(self, job_id: str) -> None:
        """Remove a delivery whose job is gone (expired): nothing is left to send."""
        self._client.zrem(keys.WEBHOOK_OUTBOX, job_id)
