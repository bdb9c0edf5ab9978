"""The costly submit checks (`api/checks.py`): their own few threads, never waited for when
busy, and tokenizing (ids and length check) on the bundled model's tokenizer."""

from __future__ import annotations

import asyncio
import threading

import pytest

from api.checks import Busy, Lane, SubmitChecks
from common import token_ids
from common.errors import InputTooLong
from common.model_files import load_tokenizer
from common.schemas import TokenIds
from common.settings import DEFAULT_MODEL_ID, Settings, resolve_model_path

pytestmark = pytest.mark.unit


def test_a_busy_lane_refuses_at_once_and_frees_its_thread_only_when_the_call_returns() -> None:
    lane = Lane(1, "test-lane")
    release = threading.Event()

    async def scenario() -> list[str]:
        seen = []
        with pytest.raises(Busy):  # past its deadline
            await lane.run(release.wait, 30, timeout=0.01)
        with pytest.raises(Busy):  # its one thread still waits
            await lane.run(str, "second")
        seen.append("refused while busy")
        release.set()
        for _ in range(3000):  # until the first call has returned
            try:
                seen.append(await lane.run(str, "third"))
                break
            except Busy:
                await asyncio.sleep(0.01)
        return seen

    try:
        assert asyncio.run(scenario()) == ["refused while busy", "third"]
    finally:
        release.set()
        lane.close()


def test_a_lane_queues_a_few_calls_and_drops_one_still_queued_at_its_deadline() -> None:
    lane = Lane(1, "test-queue", waiting=1)
    release = threading.Event()
    ran: list[str] = []

    async def scenario() -> list[str]:
        first = asyncio.ensure_future(lane.run(release.wait, 30))
        await asyncio.sleep(0)
        with pytest.raises(Busy):  # queued, then dropped unstarted at its deadline
            await lane.run(ran.append, "dropped", timeout=0.05)
        queued = asyncio.ensure_future(lane.run(ran.append, "queued"))
        await asyncio.sleep(0)
        with pytest.raises(Busy):  # the thread and the one waiting place are taken
            await lane.run(ran.append, "refused")
        release.set()
        await asyncio.wait_for(asyncio.gather(first, queued), 30)
        return ran

    try:
        assert asyncio.run(scenario()) == ["queued"]
    finally:
        release.set()
        lane.close()


def test_the_gateway_makes_the_workers_token_ids_and_checks_lengths_when_cheap() -> None:
    """Inline (a few characters) and on the lane alike: the ids a worker unpacks are exactly
    what its own tokenizer makes, under the same tokenizer id."""
    settings = Settings(auth={"mode": "disabled"})
    checks = SubmitChecks(settings)
    worker_side = load_tokenizer(resolve_model_path(settings.models[DEFAULT_MODEL_ID]))

    def tokenize(texts: list[str], truncate: bool = True) -> TokenIds | None:
        return asyncio.run(checks.tokenize(DEFAULT_MODEL_ID, texts, truncate))

    try:
        # The first call loads the tokenizer on the lane; the last is tokenized inline.
        for texts in (["a short text"], ["word " * 400, "a short one"] * 3, ["short again"]):
            ids = tokenize(texts)
            assert ids is not None and ids.tokenizer == worker_side.id
            expected = [e.ids for e in worker_side.tokenizer.encode_batch(texts)]
            assert token_ids.unpack(ids, len(texts)) == expected
        with pytest.raises(InputTooLong):
            tokenize(["a short text", "word " * 400], truncate=False)
        assert tokenize(["word " * 400] * 600, truncate=False) is None  # 1.2 M chars: the worker's
    finally:
        checks.close()


def test_unpacking_refuses_ids_that_do_not_fit_the_items() -> None:
    ids = token_ids.pack("t", [[1, 2, 3], [4]])
    assert token_ids.unpack(ids, 2) == [[1, 2, 3], [4]]
    for bad, items in ((ids, 3), (ids.model_copy(update={"lengths": [3, 2]}), 2)):
        with pytest.raises(ValueError, match="do not match"):
            token_ids.unpack(bad, items)
