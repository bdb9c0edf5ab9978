"""Stopping a background loop whose first cancellation gets lost (as redis-py 8.1 loses some
inside a command): it is cancelled again until it ends."""

from __future__ import annotations

import asyncio

import pytest

from api.background import cancel_and_wait

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]


def test_a_loop_that_swallows_a_cancellation_still_stops() -> None:
    swallowed = 0

    async def loop() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                if swallowed < 2:  # what a command that loses the cancellation looks like
                    swallowed += 1
                    continue
                raise

    async def main() -> asyncio.Task[None]:
        task = asyncio.create_task(loop())
        await asyncio.sleep(0)
        await cancel_and_wait(task)
        return task

    task = asyncio.run(main())
    assert task.cancelled()
    assert swallowed == 2


def test_nothing_to_stop_and_a_task_that_failed() -> None:
    async def boom() -> None:
        raise RuntimeError("ended badly")

    async def main() -> None:
        await cancel_and_wait(None)
        task = asyncio.create_task(boom())
        await asyncio.sleep(0)
        await cancel_and_wait(task)
        assert isinstance(task.exception(), RuntimeError)

    asyncio.run(main())
