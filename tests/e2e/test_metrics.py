"""Both metrics endpoints, scraped around real work: the counters move."""

from __future__ import annotations

import re

import httpx

from loraq.stack import Stack, free_port, wait_until
from tests.e2e.conftest import MODEL
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


def test_gateway_and_worker_metrics_move(stack: Stack, client: httpx.Client) -> None:
    port = free_port()
    worker = stack.start_worker({"LORAQ_WORKER__METRICS_PORT": str(port)})
    scrape = f"http://127.0.0.1:{port}/metrics"
    wait_until(lambda: _up(scrape) or not worker.alive, 120, "the worker's metrics port")
    gateway_before = client.get("/metrics").text
    worker_before = httpx.get(scrape).text

    jobs = [submit(client, MODEL, ["metrics"] * 3, lora_id="org/qv-r4") for _ in range(6)]
    assert all(wait_job(client, j)["status"] == "succeeded" for j in jobs)
    wait_until(lambda: "loraq_queue_depth{" in client.get("/metrics").text, 10, "queue gauges")

    gateway_after = client.get("/metrics").text
    both_before = sample(worker_before, "loraq_jobs_finished_total", status="succeeded")
    assert (
        sample(gateway_after, "loraq_jobs_submitted_total", model=MODEL)
        >= sample(gateway_before, "loraq_jobs_submitted_total", model=MODEL) + 6
    )
    assert re.search(r'loraq_queue_oldest_age_seconds\{queue="jobs\.', gateway_after)

    # This worker got some of the six jobs (the session's first worker took the others).
    def worker_counted() -> bool:
        text = httpx.get(scrape).text
        return sample(text, "loraq_jobs_finished_total", status="succeeded") > both_before

    wait_until(worker_counted, 30, "the new worker to finish a job", interval=0.2)
    worker_after = httpx.get(scrape).text
    assert sample(worker_after, "loraq_batch_rows_count") > sample(
        worker_before, "loraq_batch_rows_count"
    )
    assert sample(worker_after, "loraq_job_total_seconds_count") > 0
    cache = sample(worker_after, "loraq_adapter_cache_hits_total") + sample(
        worker_after, "loraq_adapter_cache_misses_total"
    )
    assert cache > 0
    worker.stop()
    stack.workers.remove(worker)


def _up(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
