"""Gateway (ASGI, in process) → real Redis → real Celery worker (in-process threads pool) with
a fake engine: the job system's plumbing without model weights."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from celery.contrib.testing.worker import start_worker
from fastapi.testclient import TestClient

from api.main import create_app
from common.job_store import JobStore
from common.settings import BatchSettings, Settings
from loraq.stack import wait_until
from tests.constants import FAKE_MODEL
from tests.fakes import DIMS, FakeAdapters, FakeEngine, fake_vector
from worker.batcher import Batcher
from worker.celery_app import make_worker_app
from worker.runner import JobRunner


@pytest.fixture
def settings(private_redis_url: str, tmp_path: Path) -> Settings:
    (tmp_path / "org" / "known").mkdir(parents=True)
    (tmp_path / "org" / "known" / "adapter_config.json").write_text("{}")
    return Settings(
        redis_url=private_redis_url,
        models={FAKE_MODEL: str(tmp_path)},
        adapters={"dir": tmp_path},
        worker={"model": FAKE_MODEL},
        sync_timeout_s=10,
        auth={"mode": "disabled"},
        bulk={"store": str(tmp_path / "files"), "poll_s": 0.05},
    )


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def worker(settings: Settings, engine: FakeEngine) -> Iterator[FakeAdapters]:
    adapters = FakeAdapters(["org/known"])
    batcher = Batcher(engine.encode, DIMS, BatchSettings(max_wait_ms=20))
    batcher.start()
    store = JobStore(redis.Redis.from_url(settings.redis_url), settings.result_ttl_s)
    app = make_worker_app(settings, JobRunner(store, engine, adapters, batcher.submit), adapters)
    with start_worker(app, concurrency=8, pool="threads", perform_ping_check=False):
        yield adapters
    batcher.stop()


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c


def wait_done(client: TestClient, job_id: str, timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] not in ("queued", "running"):
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.02)


def submit(client: TestClient, texts: list[str], **options: Any) -> str:
    body = {
        "model": FAKE_MODEL,
        "items": [{"text": t} for t in texts],
        "params": {"options": options},
    }
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def test_jobs_batched_across_adapters(
    client: TestClient, worker: FakeAdapters, engine: FakeEngine
) -> None:
    jobs = [
        submit(client, [f"text {i}", "shared"], **({"lora_id": "org/known"} if i % 2 else {}))
        for i in range(10)
    ]
    for i, job_id in enumerate(jobs):
        job = wait_done(client, job_id)
        assert job["status"] == "succeeded"
        slot = 0 if i % 2 else None
        expected = [fake_vector(list(t.encode()), slot) for t in (f"text {i}", "shared")]
        got = [item["dense"] for item in job["result"]["items"]]
        np.testing.assert_allclose(got, expected, rtol=1e-6)
        assert job["adapter_hash"] == ("hash-org/known" if i % 2 else None)
    assert max(len(b) for b in engine.batches) > 2, "rows of several jobs share a batch"
    assert worker.leased == 0, "every adapter lease is released"


def test_worker_side_failures_are_stored(client: TestClient, worker: FakeAdapters) -> None:
    job = wait_done(client, submit(client, ["x" * 100], truncate=False))
    assert (job["status"], job["error"]["code"]) == ("failed", "INPUT_TOO_LONG")
    poisoned = submit(client, ["POISON pill"])
    fine = submit(client, ["healthy"])
    assert wait_done(client, poisoned)["error"]["code"] == "ENCODE_FAILED"
    assert wait_done(client, fine)["status"] == "succeeded"


def test_sync_encode_waits_for_the_worker(client: TestClient, worker: FakeAdapters) -> None:
    response = client.post(
        f"/v1/encode/{FAKE_MODEL}",
        json={"items": [{"text": "hello"}], "params": {"options": {"lora_id": "org/known"}}},
        headers={"accept": "application/json"},
    )
    assert response.status_code == 200
    np.testing.assert_allclose(
        response.json()["items"][0]["dense"]["values"], fake_vector(list(b"hello"), 0), rtol=1e-6
    )


def test_readyz_sees_heartbeats(client: TestClient, settings: Settings) -> None:
    from common.heartbeats import remove_worker, write_heartbeat
    from common.schemas import WorkerInfo

    assert client.get("/readyz").status_code == 503
    r = redis.Redis.from_url(settings.redis_url)
    now = time.time()
    info = WorkerInfo(id="w1", model=FAKE_MODEL, queues=["q"], started_at=now, seen_at=now)
    write_heartbeat(r, info, heartbeat_s=5)
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["workers"][FAKE_MODEL] == 1
    remove_worker(r, "w1")
    assert client.get("/readyz").status_code == 503


def test_a_batch_prefetches_its_adapters_and_runs_at_bulk_priority(
    client: TestClient, worker: FakeAdapters
) -> None:
    """The batch's chunk jobs sit on the queue's lowest-priority list and a real Celery worker
    still consumes them; the adapter the batch names is prefetched before its chunks run."""
    lines = [
        {"custom_id": f"c{i}", "method": "POST", "url": "/v1/embeddings",
         "body": {"model": FAKE_MODEL, "input": f"text {i}",
                  **({"lora_id": "org/known"} if i % 2 else {})}}
        for i in range(6)
    ]  # fmt: skip
    data = "".join(json.dumps(x) + "\n" for x in lines).encode()
    upload = client.post("/v1/files", files={"file": ("b.jsonl", data)}, data={"purpose": "batch"})
    assert upload.status_code == 200, upload.text
    created = client.post("/v1/batches", json={
        "input_file_id": upload.json()["id"], "endpoint": "/v1/embeddings",
        "completion_window": "24h",
    })  # fmt: skip
    batch_id = created.json()["id"]
    wait_until(
        lambda: client.get(f"/v1/batches/{batch_id}").json()["status"] == "completed",
        30, "the batch to complete",
    )  # fmt: skip
    assert worker.prefetched == ["org/known"]
    counts = client.get(f"/v1/batches/{batch_id}").json()["request_counts"]
    assert counts == {"total": 6, "completed": 6, "failed": 0}
