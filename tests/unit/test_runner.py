"""The job runner's count of jobs in flight (`worker/runner.py`), which the worker's heartbeat
adds to its shard queue lengths as its backlog, the load the gateway routes on."""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

import pytest

from common.jobs import JobStatus, Transition
from common.schemas import EncodeMessage
from tests.fakes import FakeAdapters, FakeEngine
from worker.batcher import JobOutput
from worker.runner import JobRunner

pytestmark = pytest.mark.unit


class ClaimWatch:
    """A job store that notes the runner's in-flight count when a job is claimed, and answers
    that the job already finished (a redelivery: the runner skips it)."""

    def __init__(self) -> None:
        self.runner: JobRunner | None = None
        self.in_flight_at_claim: list[int] = []

    def start(self, job_id: str, now: float, worker: str = "") -> Transition:
        assert self.runner is not None
        self.in_flight_at_claim.append(self.runner.in_flight)
        return Transition(False, JobStatus.SUCCEEDED, 1)


def never_submit(rows: Any) -> Future[JobOutput]:
    raise AssertionError("a skipped job is never encoded")


def test_a_job_is_in_flight_from_the_moment_its_message_is_taken() -> None:
    """The claim is a Redis round trip; a heartbeat taken during it must still count the job,
    which is no longer in its queue."""
    store = ClaimWatch()
    runner = JobRunner(store, FakeEngine(), FakeAdapters([]), never_submit)
    store.runner = runner
    message = EncodeMessage(
        job_id="j1", model=FakeEngine.model_id, lora_id=None, texts=["a"], normalize=None,
        truncate=True, enqueued_at=0.0,
    )  # fmt: skip
    runner.handle(message.model_dump())
    assert store.in_flight_at_claim == [1]
    assert runner.in_flight == 0
