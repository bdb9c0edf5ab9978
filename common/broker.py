"""The Celery app both sides share; putting an encode message back on its queue.

What publisher and consumer must agree on (broker, key prefix, serializer, visibility timeout),
and the reliability settings every consumer uses (`make_consumer_app`: the encode workers and the
webhook sender, which must not depend on each other).

Encode jobs are not published through Celery: the gateway pushes the message onto its queue in
the same Lua call that records the job (`common.job_store`, `common.celery_wire`).
"""

from __future__ import annotations

import redis
from celery import Celery

from common import keys
from common.celery_wire import envelope
from common.redis_connection import broker_options, broker_url
from common.schemas import EncodeMessage
from common.settings import Settings


def make_celery(settings: Settings) -> Celery:
    sentinel_options, use_ssl = broker_options(settings)
    app = Celery("loraq", broker=broker_url(settings), set_as_current=False)
    app.conf.update(
        broker_transport_options={
            **sentinel_options,
            # Every broker key under our prefix (see common.keys).
            "global_keyprefix": keys.KOMBU_PREFIX,
            # An unacked message goes back to its queue after this long. It must exceed the
            # longest a reserved job can wait plus run, or a slow job is restored while its
            # worker still holds it (the copy is then dropped uncounted: common.job_store holds).
            "visibility_timeout": settings.visibility_timeout_s,
            "unacked_restore_interval": max(1, min(10, settings.visibility_timeout_s // 4)),
            "unacked_restore_throttle": 1,
        },
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        result_backend=None,
        task_default_queue=keys.model_queue(next(iter(settings.models))),
    )
    if use_ssl is not None:
        app.conf.broker_use_ssl = use_ssl
    return app


def make_consumer_app(settings: Settings) -> Celery:
    """A Celery app configured to consume reliably (encode workers and the webhook worker)."""
    app = make_celery(settings)
    app.conf.update(
        # Ack only after the job's outcome is stored: a worker that dies mid-batch leaves its
        # messages unacked, and the broker hands them to another worker after the visibility
        # timeout (`make_celery`). Outcome writes are compare-and-set, so a redelivered job
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


#: A publish rides out a broker reconnect (Redis restart, failover) within about a second, then
#: gives up so the caller can answer 503 instead of hanging.
PUBLISH_RETRY = {"max_retries": 3, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}


def publish_webhook(app: Celery, job_id: str) -> None:
    """Ask the webhook worker for a delivery attempt now (it checks that one is due)."""
    app.send_task(
        keys.TASK_WEBHOOK, args=[job_id], queue=keys.WEBHOOK_QUEUE, retry=True,
        retry_policy=PUBLISH_RETRY,
    )  # fmt: skip


def publish_prefetch(app: Celery, lora_id: str, queue: str) -> None:
    """Ask the worker consuming `queue` to load an adapter ahead of its jobs (a hint: lost, the
    jobs load it themselves)."""
    app.send_task(
        keys.TASK_PREFETCH, args=[lora_id], queue=queue, retry=True, retry_policy=PUBLISH_RETRY
    )


def enqueue(client: redis.Redis, message: EncodeMessage, queue: str) -> None:
    """Push a job's message onto `queue` again (the sweeper's republish of a lost message)."""
    raw = message.model_dump_json().encode()
    priority = message.priority
    client.lpush(keys.queue_list(queue, priority), envelope(raw, message.job_id, queue, priority))
