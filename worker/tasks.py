"""Thin Celery tasks: hand the message to the job runner. No torch here."""

from __future__ import annotations

from typing import Any, Protocol

from celery import Celery

from common import keys


class Handler(Protocol):
    def handle(self, payload: dict[str, Any]) -> None: ...


def register_tasks(app: Celery, runner: Handler) -> None:
    @app.task(name=keys.TASK_ENCODE, acks_late=True, ignore_result=True, shared=False)  # type: ignore[untyped-decorator]
    def encode(payload: dict[str, Any]) -> None:
        runner.handle(payload)
