"""Redelivery of jobs whose queue message was lost, and of jobs whose worker went away.

kombu's Redis transport pops a message (BRPOP) and only then records it as unacked; a worker
killed between the two loses the message, and a Redis restart can lose the last second of
writes. The job store is the source of truth instead: every unfinished job sits in a zset with a
redelivery deadline (from submit, and again from each start), next to a copy of its message. A
worker that finds a deadline passed decides by the job's state (`decide`): a job a live worker
still holds (`keys.job_hold`) is only given a later deadline, never published again, so a slow
job is not computed twice nor counted as a redelivery; a job nobody holds gets its copy
published to the model's shared queue, which every worker consumes; a job that ended while its
holder computed it (a cancel) and whose holder is gone has its quota counts freed. Duplicates
are harmless: a job already finished is skipped, one held is dropped, and outcome writes are
compare-and-set. One worker sweeps at a time.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from enum import Enum

from common import keys, metrics
from common.job_store import JobStore
from common.schemas import EncodeMessage, JobStatus

log = logging.getLogger(__name__)

BATCH = 200


class Overdue(Enum):
    WAIT = "wait"  # a live worker holds it: later deadline
    REPUBLISH = "republish"  # nobody holds it: publish its copy again, later deadline
    SETTLE = "settle"  # ended or unrecoverable: out of the index, quota counts freed


def decide(status: JobStatus | None, held: bool, has_message: bool) -> Overdue:
    """What to do with an overdue job, from its status, its hold and its message copy."""
    if held:
        return Overdue.WAIT
    if status in (JobStatus.QUEUED, JobStatus.RUNNING) and has_message:
        return Overdue.REPUBLISH
    return Overdue.SETTLE


class Redeliverer:
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
        """Act on every overdue job; returns how many were published again. Skips if another
        worker holds this interval's sweep."""
        if not self._store.take_sweep(self._me, self._interval_ms):
            return 0
        count = 0
        for job_id in self._store.overdue(now, BATCH):
            status, held, raw = self._store.redelivery_state(job_id)
            action = decide(status, held, raw is not None)
            if action is Overdue.SETTLE:
                self._store.let_go(job_id, "")
                self._store.forget(job_id)
                continue
            if action is Overdue.REPUBLISH and raw is not None:
                message = EncodeMessage.model_validate(json.loads(raw))
                self._publish(message, keys.model_queue(message.model))
                count += 1
            self._store.reschedule(job_id, now + self._store.redeliver_after_s)
        if count:
            log.warning("published %d overdue job(s) again", count)
            self.republished += count
            metrics.REPUBLISHED.inc(count)
        return count
