"""What a worker learns of the adapter registry on each heartbeat: deleted revisions to drop,
and pinned adapters to hold in a slot (`api.adapters` writes both keys).

Deletes are read as the revisions scored after the last one seen, so a worker drops a deleted
adapter within one heartbeat (`worker.heartbeat_s`); a worker that starts reads every delete
still within `adapters.delete_grace_s`, and clears its disk cache of them too. Pins are loaded
on a thread of their own, never the heartbeat's; a new revision of a pinned adapter is pinned,
the old one unpinned. At most half of the slots are pinned from the registry, so pins can never
leave a worker without slots for other adapters.
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import redis

from common import keys
from common.adapters import revision_id
from common.redis_values import text

log = logging.getLogger(__name__)


class Cache(Protocol):
    def pin(self, lora_id: str) -> None: ...

    def unpin(self, lora_id: str) -> None: ...

    def drop(self, lora_id: str) -> None: ...


class Dropper(Protocol):
    def drop(self, lora_id: str) -> None: ...


class RegistrySync:
    def __init__(
        self, client: redis.Redis, cache: Cache, disk: Dropper, model: str, max_pins: int
    ) -> None:
        self._redis, self._cache, self._disk = client, cache, disk
        self._model, self._max_pins = model, max_pins
        self._seen = 0.0
        #: Adapter name -> the revision pinned here.
        self.pinned: dict[str, str] = {}
        self._loader = ThreadPoolExecutor(1, thread_name_prefix="loraq-pin")

    def tick(self) -> None:
        self._drop_deleted()
        self._sync_pins()

    def _drop_deleted(self) -> None:
        deleted: list[tuple[bytes, float]] = self._redis.zrange(  # type: ignore[assignment]
            keys.DELETED_ADAPTERS, f"({self._seen!r}", "+inf", byscore=True, withscores=True
        )
        for member, score in deleted:
            lora_id = text(member)
            self._cache.drop(lora_id)
            self._disk.drop(lora_id)
            self._seen = max(self._seen, float(score))

    def _sync_pins(self) -> None:
        wanted: dict[str, str] = {}
        for field, value in self._redis.hgetall(keys.PINNED_ADAPTERS).items():
            entry = json.loads(text(value))
            if entry.get("model") == self._model:
                wanted[text(field)] = revision_id(text(field), str(entry["revision"]))
        for name, lora_id in list(self.pinned.items()):
            if wanted.get(name) != lora_id:
                self._cache.unpin(lora_id)
                del self.pinned[name]
        for name in sorted(wanted):
            if name not in self.pinned and len(self.pinned) < self._max_pins:
                self.pinned[name] = wanted[name]
                self._loader.submit(self._pin, name, wanted[name])

    def _pin(self, name: str, lora_id: str) -> None:
        try:
            self._cache.pin(lora_id)
        except Exception as exc:  # tried again on a later heartbeat
            log.warning("could not pin %s: %r", lora_id, exc)
            if self.pinned.get(name) == lora_id:
                del self.pinned[name]
            return
        if self.pinned.get(name) != lora_id:  # unpinned while it loaded
            self._cache.unpin(lora_id)

    def close(self) -> None:
        self._loader.shutdown(wait=False, cancel_futures=True)
