"""20 jobs over the base model and three adapters through the whole stack, checked against
PEFT computed in this process."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np

from tests.constants import MODEL
from tests.e2e.conftest import ADAPTERS
from tests.e2e.helpers import dense, submit, wait_job
from tests.reference import peft_embeddings

TEXTS = [
    "The tenant must return the keys at the end of the lease.",
    "Aspirin reduces the risk of a second heart attack.",
    "short",
    "A considerably longer sentence, so that rows in one batch differ in length and the "
    "packed encoder has to keep every row's tokens apart from its neighbours' tokens.",
    "Embeddings map text to vectors.",
]


def test_twenty_jobs_match_peft(client: httpx.Client, model_dir: Path, adapter_dir: Path) -> None:
    lora_ids: list[str | None] = [None, *ADAPTERS]
    submitted = []
    for i in range(20):
        lora_id = lora_ids[i % len(lora_ids)]
        texts = [*TEXTS[i % 3 :], f"job {i} says hello"]
        options = {"lora_id": lora_id} if lora_id else {}
        submitted.append((submit(client, MODEL, texts, **options), lora_id, texts))

    results = {job_id: wait_job(client, job_id) for job_id, _, _ in submitted}
    for lora_id in lora_ids:
        mine = [(results[j], texts) for j, lid, texts in submitted if lid == lora_id]
        all_texts = sorted({t for _, texts in mine for t in texts})
        ref_dir = adapter_dir / lora_id if lora_id else None
        reference = dict(
            zip(all_texts, peft_embeddings(model_dir, ref_dir, all_texts), strict=True)
        )
        for job, texts in mine:
            assert job["status"] == "succeeded", job["error"]
            assert job["lora_id"] == lora_id
            assert (job["adapter_hash"] is None) == (lora_id is None)
            got = dense(job)
            assert got.shape == (len(texts), 384)
            assert np.abs(got - np.stack([reference[t] for t in texts])).max() <= 1e-4

    vectors = [dense(results[job_id])[0] for job_id, _, _ in submitted[: len(lora_ids)]]
    for a in range(len(vectors)):
        for b in range(a + 1, len(vectors)):
            assert np.abs(vectors[a] - vectors[b]).max() > 1e-3, "adapters must change outputs"


def test_job_view_fields(client: httpx.Client) -> None:
    body = {
        "model": MODEL,
        "items": [{"id": "first", "text": "one"}, {"text": "two"}],
        "params": {"options": {"normalize": False}},
    }
    created = client.post("/v1/jobs", json=body)
    assert created.status_code == 202
    assert created.headers["location"] == f"/v1/jobs/{created.json()['id']}"
    assert created.json()["status"] == "queued"
    job = wait_job(client, created.json()["id"])
    assert job["status"] == "succeeded"
    assert [item["id"] for item in job["result"]["items"]] == ["first", None]
    assert job["n_items"] == 2 and job["model"] == MODEL and job["error"] is None
    assert job["created_at"] <= job["started_at"] <= job["finished_at"]
    timing = job["timing"]
    assert timing["total_ms"] >= timing["queue_ms"] >= 0 and timing["inference_ms"] > 0
    norms = np.linalg.norm(dense(job), axis=1)
    assert np.all(np.abs(norms - 1) > 1e-3), "normalize=false must leave vectors unnormalized"
