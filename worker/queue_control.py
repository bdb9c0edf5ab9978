"""Point the running Celery consumer at queues as shard leases come and go.

Celery fixes a worker's queues at start (`-Q`); this bootstep hands over the consumer so queues
can be added and cancelled while it runs. Calls from other threads (the heartbeat) are scheduled
onto the consumer's own event loop with `call_soon`, since kombu's consumer is not thread-safe.
Changes asked for before the consumer exists are applied when it starts.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import bootsteps

log = logging.getLogger(__name__)


class QueueControl:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._consumer: Any = None
        self._wanted: set[str] = set()

    def change(self, added: set[str], removed: set[str]) -> None:
        with self._lock:
            self._wanted = (self._wanted | added) - removed
            consumer = self._consumer
        if consumer is None:
            return
        for queue in sorted(added):
            consumer.call_soon(consumer.add_task_queue, queue)
        for queue in sorted(removed):
            consumer.call_soon(consumer.cancel_task_queue, queue)

    def attach(self, consumer: Any) -> None:
        with self._lock:
            self._consumer = consumer
            wanted = set(self._wanted)
        for queue in sorted(wanted):
            consumer.add_task_queue(queue)
        log.info("consuming shard queues %s", sorted(wanted))

    def bootstep(self) -> type[bootsteps.StartStopStep]:
        control = self

        class AttachQueueControl(bootsteps.StartStopStep):  # type: ignore[misc]
            requires = {"celery.worker.consumer.tasks:Tasks"}

            def start(self, c: Any) -> None:
                control.attach(c)

        return AttachQueueControl
