"""Both metrics endpoints, scraped around real work: the counters move."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from loraq.stack import Process, Stack, free_port, wait_until
from tests.constants import MODEL
from tests.e2e.conftest import STACK_ENV
from tests.e2e.helpers import submit, wait_job


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 if absent)."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.fixture
def lone_worker(
    redis_server: str, adapter_dir: Path, tmp_path: Path
) -> Iterator[tuple[Stack, Process, str]]:
    """A gateway and the one worker it can route to (its own Redis database, so the session's
    worker takes none of the jobs), with the worker's metrics port."""
    url = redis_server.rsplit("/", 1)[0] + "/1"
    redis.Redis.from_url(url).flushdb()
    env = {**STACK_ENV, "LORAQ_REDIS_URL": url, "LORAQ_ADAPTERS__DIR": str(adapter_dir)}
    own = Stack(env=env, log_dir=tmp_path / "logs")
    port = free_port()
    try:
        own.start_gateway()
        worker = own.start_worker({"LORAQ_WORKER__METRICS_PORT": str(port)})
        own.wait_ready()
        yield own, worker, f"http://127.0.0.1:{port}/metrics"
    finally:
        own.stop()


def test_gateway_and_worker_metrics_move(lone_worker: tuple[Stack, Process, str]) -> None:
    own, worker, scrape = lone_worker
    wait_until(lambda: _up(scrape) or not worker.alive, 120, "the worker's metrics port")
    with httpx.Client(base_url=own.url, timeout=30) as client:
        gateway_before = client.get("/metrics").text
        worker_before = httpx.get(scrape).text
        jobs = [submit(client, MODEL, ["metrics"] * 3, lora_id="org/qv-r4") for _ in range(6)]
        assert all(wait_job(client, j)["status"] == "succeeded" for j in jobs)
        wait_until(lambda: "loraq_queue_depth{" in client.get("/metrics").text, 10, "gauges")
        gateway_after = client.get("/metrics").text
    assert (
        sample(gateway_after, "loraq_jobs_submitted_total", model=MODEL)
        >= sample(gateway_before, "loraq_jobs_submitted_total", model=MODEL) + 6
    )
    assert re.search(r'loraq_queue_oldest_age_seconds\{queue="jobs\.', gateway_after)

    finished_before = sample(worker_before, "loraq_jobs_finished_total", status="succeeded")

    def worker_counted() -> bool:  # an outcome is counted just after it is stored
        text = httpx.get(scrape).text
        return sample(text, "loraq_jobs_finished_total", status="succeeded") >= finished_before + 6

    wait_until(worker_counted, 30, "the worker to count its six jobs", interval=0.2)
    worker_after = httpx.get(scrape).text
    rows = sample(worker_after, "loraq_batch_rows_sum") - sample(
        worker_before, "loraq_batch_rows_sum"
    )
    assert rows >= 18, "six jobs of three texts went through the batcher"
    assert sample(worker_after, "loraq_job_total_seconds_count") >= 6
    cache = sample(worker_after, "loraq_adapter_cache_hits_total") + sample(
        worker_after, "loraq_adapter_cache_misses_total"
    )
    assert cache >= 6


def _up(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
