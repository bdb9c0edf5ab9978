"""Cancelling a running job stops its compute at a batch boundary, and its items count against
the tenant's quota until then. A real stack on a tiny model, API keys on, batches of one row (so a
1024-item job computes for seconds), and the worker's metrics port to count encoded rows."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from api.auth import new_key
from common import keys
from loraq.stack import Stack, free_port, http_ok, wait_until
from tests.constants import MODEL
from tests.e2e.tiny import tiny_stack

ITEMS = 1024
#: Longer than the tiny model's 256 tokens: every row is a full one (truncated).
TEXT = "the quick brown fox jumps over the lazy dog " * 40


def body(items: int) -> dict[str, Any]:
    return {"model": MODEL, "items": [{"text": TEXT}] * items}


def rows_encoded(scrape: str) -> float:
    """Rows the worker has run through forward passes (the row histogram's sum)."""
    for line in httpx.get(scrape, timeout=10).text.splitlines():
        if line.startswith("loraq_batch_rows_sum "):
            return float(line.split()[1])
    return 0.0


@pytest.fixture
def keyed(tmp_path: Path) -> Iterator[tuple[Stack, httpx.Client, str]]:
    """The stack, a client of tenant acme (quota: exactly one big job's items), the worker's
    metrics URL."""
    key, digest = new_key()
    port = free_port()
    env = {
        "LORAQ_AUTH__KEYS": json.dumps(
            [{"tenant": "acme", "sha256": digest, "max_queued_items": ITEMS}]
        ),
        "LORAQ_BATCH__MAX_ITEMS": "1",
        "LORAQ_WORKER__METRICS_PORT": str(port),
    }
    scrape = f"http://127.0.0.1:{port}/metrics"
    with tiny_stack(tmp_path, env) as stack:
        wait_until(lambda: http_ok(scrape), 60, "the worker's metrics port")
        headers = {"authorization": f"Bearer {key}"}
        with httpx.Client(base_url=stack.url, headers=headers, timeout=30) as client:
            yield stack, client, scrape


def test_cancel_stops_a_running_job_and_holds_its_quota_until_it_stopped(
    keyed: tuple[Stack, httpx.Client, str],
) -> None:
    stack, client, scrape = keyed
    r = redis.Redis.from_url(stack.env["LORAQ_REDIS_URL"])
    big = client.post("/v1/jobs", json=body(ITEMS))
    assert big.status_code == 202, big.text
    job_id = big.json()["id"]
    wait_until(lambda: rows_encoded(scrape) > 0, 60, "the big job to compute")
    cancelled = client.delete(f"/v1/jobs/{job_id}")
    assert cancelled.status_code == 200, f"it was to be cancelled while running: {cancelled.text}"

    def quota_freed() -> bool:
        return int(r.hget(keys.QUEUED_ITEMS, "acme") or 0) == 0

    wait_until(quota_freed, 60, "the worker to stop the job and free its items")
    at_release = rows_encoded(scrape)
    # The quota fits one more item now; that job's single row runs after whatever the worker
    # still had of the cancelled job: nothing, once its items were freed.
    later = client.post("/v1/jobs", json=body(1))
    assert later.status_code == 202, later.text
    done = client.get(f"/v1/jobs/{later.json()['id']}", params={"wait": 60}).json()
    assert done["status"] == "succeeded"
    after = rows_encoded(scrape)
    assert after - at_release == 1, "rows of the cancelled job were computed after its release"
    assert after < ITEMS + 1, "the cancelled job's remaining rows were dropped"
    assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "cancelled"
