"""The floor: a plain Celery task that does one Redis INCR, consumed as loraq consumes.

Same broker settings (`common.broker.make_celery`: key prefix, JSON, visibility timeout), same
consumer settings (`common.broker.make_consumer_app`: late acks, prefetch 1, no events),
same pool flags as `EncodeWorker.run` (threads, `worker.concurrency`, no mingle or gossip): what
is left is Celery's own cost per task (publish, consume, ack) plus one round trip, and nothing of
loraq's. `python bench/celery_noop.py` runs the worker, configured by `LORAQ_*` variables; the
harness publishes with `make_app(...).send_task(NOOP_TASK, queue=NOOP_QUEUE)` and counts
`DONE_KEY`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import redis
from celery import Celery

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.broker import make_consumer_app
from common.settings import Settings

NOOP_TASK = "bench.noop"
NOOP_QUEUE = "bench-noop"
DONE_KEY = "bench:noop:done"


def make_app(settings: Settings) -> Celery:
    app = make_consumer_app(settings)
    client = redis.Redis.from_url(settings.redis_url)

    @app.task(name=NOOP_TASK, acks_late=True, ignore_result=True, shared=False)
    def noop() -> None:
        client.incr(DONE_KEY)

    return app


def main() -> None:
    settings = Settings()
    make_app(settings).worker_main(
        [
            "worker",
            "--pool=threads",
            f"--concurrency={settings.worker.concurrency}",
            f"--queues={NOOP_QUEUE}",
            "--hostname=bench-noop@%h",
            "--loglevel=INFO",
            "--without-mingle",
            "--without-gossip",
        ]
    )


if __name__ == "__main__":
    main()
