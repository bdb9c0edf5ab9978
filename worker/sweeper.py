"""Redelivery of jobs whose queue message was lost.

kombu's Redis transport pops a message (BRPOP) and only then records it as unacked; a worker
killed between the two loses the message, and a Redis restart can lose the last second of
writes. The job store is the source of truth instead: every unfinished job sits in a zset with a
redelivery deadline (from submit, and again from each start), next to a copy of its message. A
worker that finds a deadline passed publishes the copy again to the model's shared queue, which
every worker consumes, and pushes the deadline back. Duplicates are harmless: a job already
finished is skipped, and outcome writes are compare-and-set. One worker sweeps at a time.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

from common import keys, metrics
from common.jobs import JobStore
from common.schemas import EncodeMessage

log = logging.getLogger(__name__)

BATCH = 200


class Sweeper:
    def __init__(
        self,
        store: JobStore,
        publish: Callable[[EncodeMessage, str], None],
        interval_s: float,
        worker_id: str,
    ) -> None:
        self._store = store
        self._publish = publish
        self._interval_ms = int(interval_s * 1000)
        self._me = worker_id
        self.republished = 0

    def sweep(self, now: float) -> int:
        """Publish again every overdue job; returns how many. Skips if another worker holds
        this interval's sweep."""
        client = self._store.client
        if not client.set(keys.SWEEP_LOCK, self._me, nx=True, px=self._interval_ms):
            return 0
        count = 0
        for job_id in self._store.overdue(now, BATCH):
            raw = self._store.stored_message(job_id)
            if raw is None:  # finished or expired meanwhile
                self._store.forget(job_id)
                continue
            message = EncodeMessage.model_validate(json.loads(raw))
            self._publish(message, keys.model_queue(message.model))
            self._store.reschedule(job_id, now + self._store.redeliver_after_s)
            count += 1
        if count:
            log.warning("published %d overdue job(s) again", count)
            self.republished += count
            metrics.REPUBLISHED.inc(count)
        return count
