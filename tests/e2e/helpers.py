"""Small HTTP helpers for end-to-end tests."""

from __future__ import annotations

import time
from typing import Any

import httpx
import numpy as np

TERMINAL = {"succeeded", "failed", "cancelled"}


def submit(client: httpx.Client, model: str, texts: list[str], **options: Any) -> str:
    body = {"model": model, "items": [{"text": t} for t in texts], "params": {"options": options}}
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def wait_job(client: httpx.Client, job_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in TERMINAL:
            return job
        assert time.monotonic() < deadline, f"job {job_id} still {job['status']} after {timeout}s"
        time.sleep(0.05)


def dense(job: dict[str, Any]) -> np.ndarray:
    return np.array([item["dense"] for item in job["result"]["items"]], dtype=np.float32)
