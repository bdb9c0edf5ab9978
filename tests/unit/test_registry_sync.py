"""What a worker does with the registry's changes on each heartbeat (worker/registry_sync.py):
drop deleted revisions (memory and disk cache), pin and unpin adapters of its own model."""

from __future__ import annotations

import json

import fakeredis
import pytest

from common import keys
from worker.registry_sync import RegistrySync

pytestmark = pytest.mark.unit

MODEL = "org/model"


class Recorder:
    def __init__(self, fail: frozenset[str] = frozenset()) -> None:
        self.events: list[tuple[str, str]] = []
        self.fail = fail

    def pin(self, lora_id: str) -> None:
        self.events.append(("pin", lora_id))
        if lora_id in self.fail:
            raise RuntimeError("no such revision")

    def unpin(self, lora_id: str) -> None:
        self.events.append(("unpin", lora_id))

    def drop(self, lora_id: str) -> None:
        self.events.append(("drop", lora_id))


def _pin(r: fakeredis.FakeRedis, name: str, revision: str, model: str = MODEL) -> None:
    r.hset(keys.PINNED_ADAPTERS, name, json.dumps({"revision": revision, "model": model}))


def _settle(sync: RegistrySync) -> None:
    sync.tick()
    sync._loader.submit(lambda: None).result(10)  # the pins queued so far have run


def test_deleted_revisions_are_dropped_once() -> None:
    r = fakeredis.FakeRedis()
    cache, disk = Recorder(), Recorder()
    sync = RegistrySync(r, cache, disk, MODEL, max_pins=4)
    r.zadd(keys.DELETED_ADAPTERS, {"a/x@" + "1" * 16: 100.0, "a/y@" + "2" * 16: 200.0})
    _settle(sync)
    dropped = [("drop", "a/x@" + "1" * 16), ("drop", "a/y@" + "2" * 16)]
    assert cache.events == dropped and disk.events == dropped
    _settle(sync)
    assert cache.events == dropped  # not again
    r.zadd(keys.DELETED_ADAPTERS, {"a/z@" + "3" * 16: 300.0})
    _settle(sync)
    assert cache.events[-1] == ("drop", "a/z@" + "3" * 16)


def test_pins_follow_the_registry_for_this_model_only() -> None:
    r = fakeredis.FakeRedis()
    cache = Recorder()
    sync = RegistrySync(r, cache, Recorder(), MODEL, max_pins=2)
    _pin(r, "a/one", "1" * 16)
    _pin(r, "a/other-model", "2" * 16, model="org/another")
    _settle(sync)
    assert cache.events == [("pin", "a/one@" + "1" * 16)]
    _pin(r, "a/one", "3" * 16)  # a new revision: pinned, the old one unpinned
    _settle(sync)
    assert cache.events[1:] == [("unpin", "a/one@" + "1" * 16), ("pin", "a/one@" + "3" * 16)]
    for name in ("a/two", "a/three"):
        _pin(r, name, "4" * 16)
    _settle(sync)
    assert sorted(sync.pinned) == ["a/one", "a/three"]  # at most max_pins, by name
    r.hdel(keys.PINNED_ADAPTERS, "a/one")
    _settle(sync)
    assert ("unpin", "a/one@" + "3" * 16) in cache.events
    assert sorted(sync.pinned) == ["a/three", "a/two"]
    sync.close()


def test_a_failed_pin_is_tried_again() -> None:
    r = fakeredis.FakeRedis()
    revision = "a/bad@" + "5" * 16
    cache = Recorder(fail=frozenset({revision}))
    sync = RegistrySync(r, cache, Recorder(), MODEL, max_pins=2)
    _pin(r, "a/bad", "5" * 16)
    _settle(sync)
    assert sync.pinned == {}
    _settle(sync)
    assert cache.events == [("pin", revision), ("pin", revision)]
    sync.close()
