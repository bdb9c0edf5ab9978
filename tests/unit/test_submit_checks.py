"""The costly submit checks (`api/checks.py`): their own few threads, never waited for when
busy, and the token-length check on the bundled model's tokenizer."""

from __future__ import annotations

import asyncio
import threading

import pytest

from api.checks import Busy, Lane, SubmitChecks
from common.errors import InputTooLong
from common.settings import DEFAULT_MODEL_ID, Settings

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


def test_token_lengths_are_checked_at_submit_when_cheap() -> None:
    checks = SubmitChecks(Settings(auth={"mode": "disabled"}))

    async def check(texts: list[str]) -> None:
        await checks.not_truncated(DEFAULT_MODEL_ID, texts)

    try:
        asyncio.run(check(["a short text"]))
        with pytest.raises(InputTooLong):
            asyncio.run(check(["a short text", "word " * 400]))
        asyncio.run(check(["word " * 400] * 600))  # 1.2 M characters: left to the worker
    finally:
        checks.close()
