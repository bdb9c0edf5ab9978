"""Thin Celery tasks: hand the message to the job runner. No torch here."""

from __future__ import annotations

from typing import Any, Protocol

from celery import Celery
from celery.exceptions import Reject

from common import keys
from worker.retries import RetryLater


class Handler(Protocol):
    def handle(self, payload: dict[str, Any]) -> None: ...


def register_tasks(app: Celery, runner: Handler) -> None:
    @app.task(name=keys.TASK_ENCODE, acks_late=True, ignore_result=True, shared=False)  # type: ignore[untyped-decorator]
    def encode(payload: dict[str, Any]) -> None:
        try:
            runner.handle(payload)
        except RetryLater as exc:
            # Back to its queue (or, if the broker is down too, redelivered after the
            # visibility timeout): the job's outcome could not be stored yet.
            raise Reject(str(exc), requeue=True) from exc
