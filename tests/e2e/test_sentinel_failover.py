"""Redis high availability: the primary SIGKILLed under a steady stream of submits, Sentinel
promotes the replica, and no accepted job is lost.

A primary, one replica and three Sentinels (`loraq.stack.start_sentinel_redis`), a gateway that
waits for one replica's ack before each 202 (`LORAQ_REDIS_REPLICA_ACKS=1`), two workers, all as
real processes found through the Sentinels. Feeders submit as the SDK does: on 503 they wait
`Retry-After` and send the same request again under the same Idempotency-Key. After the kill a
supervisor starts the dead node again as a replica of the new primary once the Sentinels name
it, as Kubernetes would restart its pod: until then no replica can ack, so the gateway answers
503, which is the durability contract holding. The times from the kill to the first accepted
submit and to the first job completed are printed, not asserted.
"""

from __future__ import annotations

import json
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis

from common import keys
from common.job_store import decode_job
from common.redis_connection import sync_client
from common.settings import SentinelSettings, Settings
from loraq.stack import LOCAL_DEV_ENV, SentinelRedis, Stack, start_sentinel_redis, wait_until
from loraq.testing import save_random_adapter, save_tiny_model
from tests.constants import MODEL

ADAPTERS = ["f/a0", "f/a1", None]
TEXTS = 8
#: A request that takes longer than this counts as a hang.
HANG_S = 20.0
ENV = {
    **LOCAL_DEV_ENV,
    "LORAQ_REDIS_REPLICA_ACKS": "1",
    "LORAQ_REDIS_REPLICA_ACK_TIMEOUT_MS": "500",
    "LORAQ_VISIBILITY_TIMEOUT_S": "8",
    "LORAQ_WORKER__HEARTBEAT_S": "0.5",
    "LORAQ_ROUTING__LEASE_TTL_S": "2",
    "LORAQ_ROUTING__REFRESH_S": "0.2",
    "LORAQ_ROUTING__SHARDS": "4",
    "LORAQ_ROUTING__REDELIVER_AFTER_S": "10",
    "LORAQ_ROUTING__SWEEP_S": "1",
    "LORAQ_WORKER__TORCH_THREADS": "1",
    "LORAQ_WORKER__CONCURRENCY": "8",
}


def body(i: int) -> dict[str, Any]:
    """Job `i`'s request: one of `TEXTS` x `ADAPTERS` inputs, so a clean run of each input
    gives every job's expected vectors."""
    combo = i % (TEXTS * len(ADAPTERS))
    lora_id = ADAPTERS[combo % len(ADAPTERS)]
    text = combo // len(ADAPTERS)
    items = [{"text": f"failover text {text} part {k} " * (1 + k)} for k in range(2)]
    options = {"lora_id": lora_id} if lora_id else {}
    return {"model": MODEL, "items": items, "params": {"options": options}}


def vectors(job: dict[str, Any]) -> np.ndarray:
    return np.array([item["dense"] for item in job["result"]["items"]], dtype=np.float32)


@dataclass
class Feed:
    """Submits from a few threads as the SDK does, and records every answer."""

    url: str
    accepted: dict[str, int] = field(default_factory=dict)
    answers: Counter[str] = field(default_factory=Counter)
    #: When each accepted request was sent, and answered.
    accepted_at: list[tuple[float, float]] = field(default_factory=list)
    slowest_s: float = 0.0
    #: The most 503s one submit got before it was accepted (the SDK retries 5 times by default).
    most_retries: int = 0
    missing_retry_after: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    counter: int = 0

    def next_index(self) -> int:
        with self.lock:
            self.counter += 1
            return self.counter

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=HANG_S + 10) as client:
            while not self.stop.is_set():
                self.submit(client, self.next_index())

    def submit(self, client: httpx.Client, i: int) -> None:
        headers = {"Idempotency-Key": uuid.uuid4().hex}
        retries = 0
        while not self.stop.is_set():
            started = time.monotonic()
            sent_at = time.time()
            try:
                response = client.post("/v1/jobs", json=body(i), headers=headers)
            except httpx.HTTPError as exc:
                self.record(f"transport {type(exc).__name__}", time.monotonic() - started)
                continue
            self.record(str(response.status_code), time.monotonic() - started)
            if response.status_code in (200, 202):
                with self.lock:
                    self.accepted[response.json()["id"]] = i
                    self.accepted_at.append((sent_at, time.time()))
                    self.most_retries = max(self.most_retries, retries)
                return
            if response.status_code != 503:
                return
            retry_after = response.headers.get("retry-after")
            if retry_after is None:
                self.missing_retry_after += 1
            retries += 1
            time.sleep(float(retry_after or 1))

    def record(self, answer: str, took: float) -> None:
        with self.lock:
            self.answers[answer] += 1
            self.slowest_s = max(self.slowest_s, took)

    def count(self) -> int:
        with self.lock:
            return len(self.accepted)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("tiny")
    model_dir = save_tiny_model(root / "model")
    for seed, lora_id in enumerate(a for a in ADAPTERS if a):
        save_random_adapter(
            model_dir, root / "adapters" / lora_id, MODEL, seed=seed, r=4, lora_alpha=8,
            target_modules=["query", "value"],
        )  # fmt: skip
    return model_dir, root / "adapters"


@dataclass
class HaCluster:
    redis: SentinelRedis
    stack: Stack

    def store(self) -> redis.Redis:
        """A client of whichever node is primary now (through the Sentinels)."""
        addresses = [f"127.0.0.1:{port}" for port in self.redis.sentinels]
        settings = Settings(
            redis_url="redis://127.0.0.1/0",
            sentinel=SentinelSettings(addresses=addresses, master_name=self.redis.master_name),
        )
        return sync_client(settings)


def workers_seen(stack: Stack) -> int:
    """Workers consuming shard queues, as the gateway's router sees them."""
    view = httpx.get(stack.url + "/v1/workers", timeout=10).json()
    return sum(len(w["queues"]) > 1 for w in view["models"][MODEL]["workers"])


@pytest.fixture
def cluster(tmp_path: Path, tiny: tuple[Path, Path]) -> Iterator[HaCluster]:
    model_dir, adapter_dir = tiny
    group = start_sentinel_redis(tmp_path / "redis")
    env = {
        **ENV,
        **group.env,
        "LORAQ_MODELS": json.dumps({MODEL: str(model_dir)}),
        "LORAQ_ADAPTERS__DIR": str(adapter_dir),
    }
    stack = Stack(env=env, log_dir=tmp_path / "logs")
    try:
        stack.start_gateway()
        stack.start_worker()
        stack.start_worker()
        stack.wait_ready()
        wait_until(lambda: workers_seen(stack) == 2, 60, "the gateway to see both workers")
        yield HaCluster(group, stack)
    finally:
        stack.stop()
        group.stop()


def fail_over(c: HaCluster, feed: Feed, kill_worker: bool) -> dict[str, float]:
    """Kill the primary (and a worker) under load; restart the node once another is primary.
    Returns the times the test reports."""
    wait_until(lambda: feed.count() >= 40, 60, "load before the kill")
    old = c.redis.primary_port()
    assert old is not None
    killed_at = time.time()
    c.redis.nodes[old].popen.send_signal(signal.SIGKILL)
    if kill_worker:
        c.stack.workers[0].popen.send_signal(signal.SIGKILL)
    wait_until(lambda: c.redis.primary_port() not in (None, old), 30, "Sentinel to promote")
    promoted_s = time.time() - killed_at
    wait_until(lambda: c.redis.primary_port(unanimous=True) not in (None, old), 30, "consensus")
    c.redis.restart_node(old)
    before = feed.count()
    wait_until(lambda: feed.count() >= before + 40, 60, "load after the failover")
    return {"promoted_s": promoted_s, "killed_at": killed_at}


def expected_vectors(client: httpx.Client) -> dict[int, np.ndarray]:
    """A clean run of every input, on the healed cluster: what each job must have returned."""
    out = {}
    for combo in range(TEXTS * len(ADAPTERS)):
        response = client.post("/v1/jobs", json=body(combo))
        assert response.status_code == 202, response.text
        job = client.get(f"/v1/jobs/{response.json()['id']}", params={"wait": 30}).json()
        assert job["status"] == "succeeded", job
        out[combo] = vectors(job)
    return out


def check_no_accepted_job_lost(c: HaCluster, kill_worker: bool) -> None:
    feed = Feed(c.stack.url)
    feeders = [threading.Thread(target=feed.run, daemon=True) for _ in range(3)]
    for feeder in feeders:
        feeder.start()
    try:
        times = fail_over(c, feed, kill_worker)
    finally:
        feed.stop.set()
        for feeder in feeders:
            feeder.join(HANG_S + 15)
    killed_at = times["killed_at"]
    accepted = dict(feed.accepted)
    store = c.store()

    def statuses() -> Counter[str]:
        with store.pipeline(transaction=False) as pipe:
            for job_id in accepted:
                pipe.hget(keys.job(job_id), "status")
            return Counter((s or b"missing").decode() for s in pipe.execute())

    def settled() -> bool:
        counts = statuses()
        return counts["queued"] + counts["running"] == 0

    try:
        wait_until(settled, 60, "every accepted job to finish", interval=0.5)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}: {dict(statuses())}") from None
    assert statuses() == {"succeeded": len(accepted)}
    jobs = {j: decode_job(store.hgetall(keys.job(j))) for j in accepted}
    first_done = min(j.finished_at or 0 for j in jobs.values() if (j.finished_at or 0) > killed_at)
    first_accepted = min(answered for sent, answered in feed.accepted_at if sent > killed_at)

    with httpx.Client(base_url=c.stack.url, timeout=30) as client:
        expected = expected_vectors(client)
        for job_id, i in accepted.items():
            job = client.get(f"/v1/jobs/{job_id}").json()
            combo = i % len(expected)
            np.testing.assert_allclose(vectors(job), expected[combo], atol=1e-5)

    answers = dict(feed.answers)
    print(
        f"\nfailover{' + worker kill' if kill_worker else ''}: accepted={len(accepted)} "
        f"answers={answers} promoted={times['promoted_s']:.2f}s "
        f"kill->first accepted submit={first_accepted - killed_at:.2f}s "
        f"kill->first completed job={first_done - killed_at:.2f}s "
        f"slowest submit={feed.slowest_s:.2f}s most retries of one submit={feed.most_retries}"
    )
    assert set(answers) <= {"202", "200", "503"}, answers
    assert feed.missing_retry_after == 0
    assert feed.slowest_s < HANG_S
    survivors = c.stack.workers[1:] if kill_worker else c.stack.workers
    assert all(w.alive for w in survivors), "workers reconnect, they do not exit"


@pytest.mark.chaos
def test_primary_killed_under_load_loses_no_accepted_job(cluster: HaCluster) -> None:
    check_no_accepted_job_lost(cluster, kill_worker=False)


@pytest.mark.chaos
def test_primary_and_a_worker_killed_loses_no_accepted_job(cluster: HaCluster) -> None:
    check_no_accepted_job_lost(cluster, kill_worker=True)
