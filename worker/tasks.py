"""Thin Celery tasks: hand the message to the job runner. No torch here."""

from __future__ import annotations

import logging
from typing import Any, Protocol

from celery import Celery
from celery.exceptions import Reject

from common import keys
from common.schemas import validate_lora_id
from worker.retries import RetryLater

log = logging.getLogger(__name__)


class Handler(Protocol):
    def handle(self, payload: dict[str, Any]) -> None: ...


class Prefetcher(Protocol):
    def prefetch(self, lora_id: str) -> None: ...


def register_tasks(app: Celery, runner: Handler, adapters: Prefetcher) -> None:
    @app.task(name=keys.TASK_ENCODE, acks_late=True, ignore_result=True, shared=False)  # type: ignore[untyped-decorator]
    def encode(payload: dict[str, Any]) -> None:
        try:
            runner.handle(payload)
        except RetryLater as exc:
            # Back to its queue (or, if the broker is down too, redelivered after the
            # visibility timeout): the job's outcome could not be stored yet.
            raise Reject(str(exc), requeue=True) from exc

    @app.task(name=keys.TASK_PREFETCH, acks_late=False, ignore_result=True, shared=False)  # type: ignore[untyped-decorator]
    def prefetch(lora_id: str) -> None:
        """A hint: an adapter that cannot be loaded now fails its jobs later, with its error."""
        try:
            adapters.prefetch(validate_lora_id(lora_id))
        except Exception as exc:
            log.info("prefetch of %r did not load it: %r", lora_id[:200], exc)
