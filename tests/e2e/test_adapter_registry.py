"""The adapter registry end to end: a gateway, a worker and Redis on a tiny model, API keys on.

An adapter trained with PEFT inside the test is pushed through the SDK and used at once; its
vectors equal PEFT's own. A new revision takes new jobs while `@<hash>` keeps the old one;
a delete refuses new jobs at once while the jobs already queued finish, and the worker drops the
adapter within a few heartbeats; a pinned adapter is loaded without any job asking; another
tenant sees none of it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from api.auth import new_key
from loraq.demo_data import DOMAINS
from loraq.stack import Stack, wait_until
from loraq.testing import save_random_adapter
from loraq.training import train_lora
from loraq_client import LoraqClient, NotFoundError
from tests.constants import MODEL
from tests.e2e.tiny import tiny_stack
from tests.reference import peft_embeddings

pytestmark = pytest.mark.e2e

TEXTS = ["the landlord kept my deposit", "can my boss fire me for no reason", "hello"]
HEARTBEAT_S = 0.5


@dataclass
class Registry:
    stack: Stack
    root: Path
    keys: dict[str, str]

    def client(self, tenant: str) -> LoraqClient:
        return LoraqClient(self.stack.url, api_key=self.keys[tenant], timeout=60)

    def http(self, tenant: str) -> httpx.Client:
        headers = {"authorization": f"Bearer {self.keys[tenant]}"}
        return httpx.Client(base_url=self.stack.url, headers=headers, timeout=60)

    @property
    def model_dir(self) -> Path:
        return self.root / "model"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    root = tmp_path_factory.mktemp("registry")
    made = {tenant: new_key() for tenant in ("acme", "other")}
    env = {
        "LORAQ_AUTH__KEYS": json.dumps(
            [{"tenant": t, "sha256": digest, "rate_per_s": 1000} for t, (_, digest) in made.items()]
        ),
        "LORAQ_ADAPTERS__STORE": str(root / "store"),
        "LORAQ_ADAPTERS__CACHE_DIR": str(root / "cache"),
        "LORAQ_WORKER__HEARTBEAT_S": str(HEARTBEAT_S),
    }
    with tiny_stack(root, env) as stack:
        yield Registry(stack, root, {tenant: key for tenant, (key, _) in made.items()})


def trained(model_dir: Path, out: Path, seed: int) -> Path:
    domain = DOMAINS[0]
    pairs = [(query, domain.passages[i]) for query, i in domain.train]
    train_lora(
        model_dir, pairs, out, base_model_id=MODEL, rank=4, alpha=8, epochs=2, lr=2e-2,
        seed=seed, num_threads=1,
    )  # fmt: skip
    return out


def encode(client: LoraqClient, lora_id: str) -> tuple[np.ndarray, dict[str, Any]]:
    job = client.submit(MODEL, TEXTS, {"lora_id": lora_id}).wait(timeout=60)
    return job.vectors, job.data


def warm(registry: Registry, tenant: str) -> list[str]:
    with registry.http(tenant) as http:
        view = http.get("/v1/workers").json()
    return list(view["models"][MODEL]["warm_adapters"])


def test_push_use_new_revision_and_pinned_hash(registry: Registry) -> None:
    first = trained(registry.model_dir, registry.root / "first", seed=1)
    second = trained(registry.model_dir, registry.root / "second", seed=2)
    with registry.client("acme") as client:
        v1 = client.push_adapter(first, "acme/legal")["latest"]
        vectors, job = encode(client, "acme/legal")  # used at once, no restart
        assert job["adapter_hash"] == v1
        reference = peft_embeddings(registry.model_dir, first, TEXTS)
        np.testing.assert_allclose(vectors, reference, atol=2e-5)
        base = client.submit(MODEL, TEXTS).wait(timeout=60).vectors
        assert np.abs(vectors - base).max() > 1e-2, "the adapter changes the vectors"

        v2 = client.push_adapter(second, "acme/legal")["latest"]
        assert v2 != v1
        new_vectors, new_job = encode(client, "acme/legal")
        assert new_job["adapter_hash"] == v2
        assert np.abs(new_vectors - vectors).max() > 1e-2, "the revisions differ"
        np.testing.assert_allclose(
            new_vectors, peft_embeddings(registry.model_dir, second, TEXTS), atol=2e-5
        )
        old_vectors, old_job = encode(client, f"acme/legal@{v1}")
        assert old_job["adapter_hash"] == v1
        np.testing.assert_allclose(old_vectors, reference, atol=2e-5)

        shown = client.adapter("acme/legal")
        assert [r["hash"] for r in shown["revisions"]] == [v1, v2]
        assert shown["jobs"] == 3 and shown["loads"] >= 2
        wait_until(
            lambda: client.adapter("acme/legal")["warm_workers"] == 1, 30, "a warm worker shown"
        )
    assert not any(a.startswith("acme/") for a in warm(registry, "other"))
    with registry.client("other") as other, pytest.raises(NotFoundError):
        other.submit(MODEL, TEXTS, {"lora_id": "acme/legal"})


def test_delete_while_jobs_run(registry: Registry) -> None:
    adapter = save_random_adapter(
        registry.model_dir, registry.root / "doomed", MODEL, seed=5, r=2,
        target_modules=["query", "value"],
    )  # fmt: skip
    with registry.client("acme") as client:
        revision = client.push_adapter(adapter, "acme/doomed")["latest"]
        jobs = [client.submit(MODEL, TEXTS * 20, {"lora_id": "acme/doomed"}) for _ in range(20)]
        client.delete_adapter("acme/doomed")
        with pytest.raises(NotFoundError):
            client.submit(MODEL, TEXTS, {"lora_id": "acme/doomed"})
        with pytest.raises(NotFoundError):
            client.submit(MODEL, TEXTS, {"lora_id": f"acme/doomed@{revision}"})
        for job in jobs:  # queued before the delete: they all run on the revision
            done = job.wait(timeout=120)
            assert done.status == "succeeded" and done.data["adapter_hash"] == revision
    wait_until(
        lambda: f"acme/doomed@{revision}" not in warm(registry, "acme"),
        10 * HEARTBEAT_S + 10,
        "the worker to drop the deleted adapter",
    )
    cached = registry.root / "cache" / "registry" / "acme" / "doomed" / revision
    wait_until(lambda: not cached.exists(), 30, "the worker to forget its disk copy")


def test_pinned_adapter_is_loaded_without_a_job_and_follows_new_revisions(
    registry: Registry,
) -> None:
    def random_adapter(seed: int) -> Path:
        return save_random_adapter(
            registry.model_dir, registry.root / f"pin-{seed}", MODEL, seed=seed, r=2,
            target_modules=["key"],
        )  # fmt: skip

    with registry.client("acme") as client:
        first = client.push_adapter(random_adapter(7), "acme/pinned")["latest"]
        assert client.pin_adapter("acme/pinned")["pinned"]
        wait_until(
            lambda: f"acme/pinned@{first}" in warm(registry, "acme"), 30, "the pinned adapter"
        )
        second = client.push_adapter(random_adapter(8), "acme/pinned")["latest"]
        wait_until(
            lambda: f"acme/pinned@{second}" in warm(registry, "acme"), 30, "its new revision"
        )
        assert not client.unpin_adapter("acme/pinned")["pinned"]
        client.delete_adapter("acme/pinned")
    assert not any(a.startswith("acme/") for a in warm(registry, "other"))
