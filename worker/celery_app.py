"""The encode worker's Celery app: the shared consumer settings (`common.broker`) and its tasks.

Jobs run in a thread pool inside one process, so the model is loaded once and the batcher sees
every job the worker holds; each task thread blocks until its job's batch is done.
"""

from __future__ import annotations

from celery import Celery

from common.broker import make_consumer_app
from common.settings import Settings
from worker.tasks import Handler, Prefetcher, register_tasks


def make_worker_app(settings: Settings, runner: Handler, adapters: Prefetcher) -> Celery:
    app = make_consumer_app(settings)
    register_tasks(app, runner, adapters)
    return app
