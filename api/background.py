"""Stopping the gateway's background loops, even when a cancellation gets lost.

redis-py (8.1) sometimes swallows the CancelledError that a cancel raises inside a command (about
half of 200 tries in a probe), and a loop around that command then runs on: a gateway's
shutdown waited on its cluster-view refresh forever. So a loop is cancelled again until it has
ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

log = logging.getLogger(__name__)

#: How long one cancellation gets to end the task before the next.
RETRY_S = 0.5


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    if task is None:
        return
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=RETRY_S)
    with contextlib.suppress(asyncio.CancelledError):
        if (exc := task.exception()) is not None:
            log.warning("background task %s ended with %r", task.get_name(), exc)
