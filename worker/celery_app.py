"""The worker's Celery app, with every reliability setting in one place.

Jobs run in a thread pool inside one process, so the model is loaded once and the batcher sees
every job the worker holds; each task thread blocks until its job's batch is done.
"""

from __future__ import annotations

from celery import Celery

from common.queueing import make_celery
from common.settings import Settings
from worker.tasks import Handler, register_tasks


def make_consumer_app(settings: Settings) -> Celery:
    """A Celery app configured to consume reliably (encode workers and the webhook worker)."""
    app = make_celery(settings)
    app.conf.update(
        # Ack only after the job's outcome is stored: a worker that dies mid-batch leaves its
        # messages unacked, and the broker hands them to another worker after the visibility
        # timeout (common.queueing). Outcome writes are compare-and-set, so a redelivered job
        # that had already finished changes nothing. A job computed past the visibility timeout
        # is handed out again while its worker still holds it: that copy is dropped (acked)
        # without counting a delivery (the runner's hold check), so a slow job is neither
        # computed twice nor dead-lettered.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # Reserve no more jobs than there are task threads: a reserved job sits unacked, and
        # should not wait behind a long queue in one worker while others are idle.
        worker_prefetch_multiplier=1,
        # Our own errors never reach Celery (the runner stores them as job failures); whatever
        # does is a bug in the task itself and is acked so it cannot loop forever.
        task_acks_on_failure_or_timeout=True,
        # Task events off: publishing them cost ~1 ms of worker CPU and a Redis publish per job
        # (bench/control_plane.py, floor with and without). Flower still works: it turns
        # events on in every worker by a remote-control broadcast (its `enable_events`).
        worker_send_task_events=False,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
    )
    return app


def make_worker_app(settings: Settings, runner: Handler) -> Celery:
    app = make_consumer_app(settings)
    register_tasks(app, runner)
    return app
