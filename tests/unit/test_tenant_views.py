"""What a tenant sees of a job names nothing internal: no worker host and process id
(`common/job_view.py`), no exception text in a `WORKER_ERROR` (`worker/runner.py`)."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future

import fakeredis
import pytest

from common import keys
from common.job_store import JobStore, encode_job
from common.job_view import job_view
from common.schemas import EncodeMessage, JobStatus, StoredJob
from tests.fakes import FakeAdapters, FakeEngine
from worker.batcher import JobOutput
from worker.engine.types import Row
from worker.runner import JobRunner

pytestmark = pytest.mark.unit

SECRET = "connection to 10.0.3.7:5432 refused in /srv/loraq/internal.py"


def stored_job(**fields: object) -> StoredJob:
    data: dict[str, object] = {
        "id": "job_1", "status": JobStatus.RUNNING, "model": FakeEngine.model_id, "n_items": 1,
        "created_at": 1.0, "started_at": 2.0, "worker": "gpu-host-7-4242",
    }  # fmt: skip
    return StoredJob.model_validate({**data, **fields})


def test_the_worker_is_in_operators_views_only() -> None:
    job = stored_job()
    assert "worker" not in job_view(job, None, "/v1/jobs/job_1")
    assert job_view(job, None, "/v1/jobs/job_1", internal=True)["worker"] == job.worker


def test_a_worker_error_keeps_its_exception_text_out_of_the_job() -> None:
    client = fakeredis.FakeRedis()
    job = stored_job(status=JobStatus.QUEUED, started_at=None, worker=None)
    client.hset(keys.job(job.id), mapping=encode_job(job))
    store = JobStore(client, 600)

    def broken(rows: Sequence[Row], *_: object) -> Future[JobOutput]:
        raise RuntimeError(SECRET)

    runner = JobRunner(store, FakeEngine(), FakeAdapters([]), broken)
    message = EncodeMessage(
        job_id=job.id, model=job.model, lora_id=None, texts=["a"], normalize=None,
        truncate=True, enqueued_at=0.0,
    )  # fmt: skip
    runner.handle(message.model_dump())
    failed = store.get(job.id)
    assert failed is not None and failed.status is JobStatus.FAILED
    assert failed.error_code == "WORKER_ERROR"
    assert failed.error_message and "10.0.3.7" not in failed.error_message
    assert "RuntimeError" not in failed.error_message
