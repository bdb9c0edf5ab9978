"""The webhook worker process: Celery on the `webhooks` queue, plus the outbox sweep.

A separate, light process (no model, no torch): deliveries wait on receivers for up to the
timeout, and that waiting must never occupy an encode worker. Its thread pool bounds how many
receivers it waits on at once, and the per-host cap (`webhooks.outbox`) how many of those threads
one receiver can hold.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from functools import partial

import redis
from celery import Celery, signals
from prometheus_client import start_http_server

from common import keys
from common.broker import make_consumer_app, publish_webhook
from common.job_store import JobStore
from common.redis_connection import sync_client
from common.settings import Settings
from webhooks.delivery import OutboxSweeper, WebhookSender
from webhooks.outbox import Outbox

log = logging.getLogger(__name__)


def make_webhook_app(settings: Settings, sender: WebhookSender) -> Celery:
    app = make_consumer_app(settings)

    @app.task(name=keys.TASK_WEBHOOK, acks_late=True, ignore_result=True, shared=False)  # type: ignore[untyped-decorator]
    def deliver(job_id: str) -> None:
        sender.deliver(job_id)

    return app


class WebhookWorker:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.redis = sync_client(settings)
        store = JobStore(self.redis, settings.result_ttl_s)
        outbox = Outbox(self.redis)
        self.sender = WebhookSender(store, outbox, settings.webhooks, settings.auth.keys)
        self.app = make_webhook_app(settings, self.sender)
        publish = partial(publish_webhook, self.app)
        self.sweeper = OutboxSweeper(outbox, publish, self.sender.lease_s)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sweep_loop, name="loraq-outbox", daemon=True)

    def _sweep_loop(self) -> None:
        while not self._stop.wait(self.settings.webhooks.sweep_s):
            try:
                self.sweeper.sweep(time.time())
            except redis.RedisError as exc:
                log.warning("outbox sweep failed: %s", exc)

    def run(self) -> None:
        if self.settings.webhooks.metrics_port:
            start_http_server(self.settings.webhooks.metrics_port)
        signals.worker_shutdown.connect(lambda **_: self._stop.set(), weak=False)
        self._thread.start()
        self.app.worker_main(
            [
                "worker",
                "--pool=threads",
                f"--concurrency={self.settings.webhooks.concurrency}",
                f"--queues={keys.WEBHOOK_QUEUE}",
                f"--hostname=loraq-webhooks-{os.getpid()}@%h",
                "--loglevel=INFO",
                "--without-mingle",
                "--without-gossip",
            ]
        )
