"""Signed webhooks through the real stack: a real receiver on loopback, a real encode worker and
the webhook worker process, with a retry schedule of half-seconds."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from common import keys
from common.broker import enqueue
from common.schemas import EncodeMessage
from loraq.stack import LOCAL_DEV_ENV, Stack, wait_until
from loraq_client import batch_lines, verify_webhook
from tests.constants import MODEL
from tests.e2e.tiny import tiny_stack
from tests.receiver import Answer, Receiver

SECRET = "whsec_" + base64.b64encode(b"loraq-test-signing-secret-32byte").decode()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


@pytest.fixture(scope="module")
def hooks_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {
        **LOCAL_DEV_ENV,
        "LORAQ_WORKER__HEARTBEAT_S": "0.5",
        "LORAQ_WEBHOOKS__SECRET": SECRET,
        "LORAQ_WEBHOOKS__ALLOW_NETWORKS": '["127.0.0.0/8"]',
        "LORAQ_WEBHOOKS__RETRY_SCHEDULE_S": "[0.5, 0.5, 0.5]",
        "LORAQ_WEBHOOKS__JITTER": "0",
        "LORAQ_WEBHOOKS__TIMEOUT_S": "1",
        "LORAQ_WEBHOOKS__SWEEP_S": "0.2",
        "LORAQ_WEBHOOKS__INLINE_RESULT_MAX_BYTES": "4096",
        "LORAQ_ROUTING__REFRESH_S": "0.2",
    }
    with tiny_stack(tmp_path_factory.mktemp("webhooks"), env, webhooks=True) as stack:
        yield stack


@pytest.fixture
def client(hooks_stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=hooks_stack.url, timeout=30) as c:
        yield c


def submit(client: httpx.Client, url: str, texts: int = 1, **webhook: Any) -> str:
    body = {
        "model": MODEL,
        "items": [{"id": f"i{k}", "text": f"hello {k}"} for k in range(texts)],
        "webhook": {"url": url, **webhook},
    }
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def tenant_secret(client: httpx.Client) -> str:
    """The caller's tenant's signing secret, as its receiver would fetch it."""
    response = client.get("/v1/webhook-secret")
    assert response.status_code == 200, response.text
    secret: str = response.json()["secret"]
    return secret


def webhook_state(client: httpx.Client, job_id: str) -> dict[str, Any]:
    state: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()["webhook"]
    return state


def settled(client: httpx.Client, job_id: str) -> bool:
    return webhook_state(client, job_id)["status"] in ("delivered", "failed")


def test_retries_until_delivered_with_a_stable_signed_id(
    client: httpx.Client, receiver: Receiver
) -> None:
    receiver.script["/flaky"] = [Answer(500), Answer(500), Answer(200)]
    job_id = submit(client, receiver.url("/flaky"), texts=2)
    wait_until(lambda: settled(client, job_id), 30, "the delivery to settle")
    state = webhook_state(client, job_id)
    assert (state["status"], state["attempts"], state["last_status_code"]) == ("delivered", 3, 200)
    calls = receiver.requests_to("/flaky")
    assert len(calls) == 3
    assert len({c.headers["webhook-id"] for c in calls}) == 1, "webhook-id is stable across retries"
    verified = verify_webhook(calls[-1].headers, calls[-1].body, tenant_secret(client))
    assert verified["type"] == "job.succeeded"
    data = verified["data"]
    assert data["id"] == job_id and data["status"] == "succeeded"
    assert [item["id"] for item in data["result"]["items"]] == ["i0", "i1"]
    # The configured secret is a master key: it signs no tenant's webhooks itself.
    for other in (
        SECRET,
        "whsec_" + base64.b64encode(b"another-secret-entirely-32-bytes").decode(),
    ):
        with pytest.raises(WebhookVerificationError):
            Webhook(other).verify(calls[-1].body, calls[-1].headers)


def test_large_results_are_linked_not_inlined(client: httpx.Client, receiver: Receiver) -> None:
    job_id = submit(client, receiver.url("/large"), texts=40)  # 40 x 32 floats > 4096 bytes
    wait_until(lambda: settled(client, job_id), 30, "delivery")
    data = json.loads(receiver.requests_to("/large")[-1].body)["data"]
    assert data["result"] is None
    assert data["links"]["result"] == f"/v1/jobs/{job_id}"


def test_gone_stops_retrying(client: httpx.Client, receiver: Receiver) -> None:
    receiver.script["/gone"] = [Answer(410)]
    job_id = submit(client, receiver.url("/gone"))
    wait_until(lambda: settled(client, job_id), 30, "the delivery to settle")
    state = webhook_state(client, job_id)
    assert (state["status"], state["attempts"], state["last_status_code"]) == ("failed", 1, 410)
    assert state["next_attempt_at"] is None
    assert len(receiver.requests_to("/gone")) == 1


def test_silent_receiver_times_out_and_is_retried(client: httpx.Client, receiver: Receiver) -> None:
    never = threading.Event()
    receiver.script["/silent"] = [Answer(200, hold=never)]
    job_id = submit(client, receiver.url("/silent"))
    wait_until(lambda: settled(client, job_id), 60, "the schedule to run out")
    never.set()
    state = webhook_state(client, job_id)
    assert (state["status"], state["attempts"]) == ("failed", 4)  # first try + 3 retries
    assert "Timeout" in state["last_error"]
    assert len(receiver.requests_to("/silent")) == 4


def test_a_dripping_receiver_gets_one_bounded_attempt_at_a_time(
    client: httpx.Client, receiver: Receiver
) -> None:
    """A byte every 0.2 s keeps any per-read timeout from firing: each attempt still ends at
    the 1 s deadline, and no two attempts of the delivery overlap."""
    receiver.script["/drip"] = [Answer(200, headers={"x-pad": "p" * 40}, drip_s=0.2)]
    job_id = submit(client, receiver.url("/drip"))
    wait_until(lambda: settled(client, job_id), 120, "the schedule to run out")
    state = webhook_state(client, job_id)
    assert (state["status"], state["attempts"]) == ("failed", 4)
    assert state["last_error"].startswith("Timeout")
    assert len(receiver.requests_to("/drip")) == 4
    assert receiver.most_in_flight["/drip"] == 1


def test_slow_receiver_does_not_delay_encoding(client: httpx.Client, receiver: Receiver) -> None:
    release = threading.Event()
    receiver.script["/slow"] = [Answer(200, hold=release)]
    hooked = submit(client, receiver.url("/slow"))
    wait_until(lambda: len(receiver.requests_to("/slow")) == 1, 30, "the delivery to start")
    others = [
        client.post("/v1/jobs", json={"model": MODEL, "items": [{"text": f"t{i}"}]}).json()["id"]
        for i in range(10)
    ]
    done = [client.get(f"/v1/jobs/{j}", params={"wait": 30}).json()["status"] for j in others]
    assert done == ["succeeded"] * 10
    assert webhook_state(client, hooked)["status"] == "pending", "the slow delivery is still open"
    release.set()


def test_events_filter(client: httpx.Client, receiver: Receiver) -> None:
    job_id = submit(client, receiver.url("/only-failures"), events=["failed"])
    assert client.get(f"/v1/jobs/{job_id}", params={"wait": 30}).json()["status"] == "succeeded"
    assert webhook_state(client, job_id)["status"] == "waiting"
    assert receiver.requests_to("/only-failures") == []


def test_recomputed_job_sends_one_delivery(
    hooks_stack: Stack, client: httpx.Client, receiver: Receiver
) -> None:
    """The job's message is published a second time (as a redelivery would): two computes, one
    terminal transition, one delivery."""
    job_id = submit(client, receiver.url("/once"))
    r = redis.Redis.from_url(hooks_stack.env["LORAQ_REDIS_URL"])
    raw = r.get(keys.job_message(job_id))
    if raw is not None:  # not finished yet: publish the copy again
        enqueue(r, EncodeMessage.model_validate_json(raw), keys.model_queue(MODEL))
    wait_until(lambda: settled(client, job_id), 30, "delivery")
    queue = keys.queue_list(keys.model_queue(MODEL))
    wait_until(
        lambda: r.llen(queue) == 0 and r.hlen(keys.KOMBU_PREFIX + "unacked") == 0,
        30,
        "the duplicate to be consumed",
    )
    assert r.zscore(keys.WEBHOOK_OUTBOX, job_id) is None
    assert len(receiver.requests_to("/once")) == 1


def test_unresolvable_host_fails_the_delivery(client: httpx.Client) -> None:
    job_id = submit(client, "http://no-such-host.invalid/hook")
    wait_until(lambda: settled(client, job_id), 30, "the delivery to settle")
    state = webhook_state(client, job_id)
    assert (state["status"], state["attempts"]) == ("failed", 4)
    assert "does not resolve" in state["last_error"]


def test_a_batch_end_is_delivered_signed_with_retries(
    client: httpx.Client, receiver: Receiver
) -> None:
    """A batch's webhook goes through the same outbox, signing, retries and delivery log."""
    receiver.script["/batch"] = [Answer(503), Answer(200)]
    data = "".join(batch_lines((f"text {i}" for i in range(5)), MODEL, None, "c")).encode()
    upload = client.post("/v1/files", files={"file": ("in.jsonl", data)}, data={"purpose": "batch"})
    assert upload.status_code == 200, upload.text
    created = client.post("/v1/batches", json={
        "input_file_id": upload.json()["id"], "endpoint": "/v1/embeddings",
        "completion_window": "24h",
        "webhook": {"url": receiver.url("/batch"), "events": ["completed"]},
    })  # fmt: skip
    assert created.status_code == 200, created.text
    batch_id = created.json()["id"]

    def delivered() -> bool:
        state = client.get(f"/v1/batches/{batch_id}").json()["webhook"]
        return state["status"] == "delivered"

    wait_until(delivered, 60, "the batch's webhook to be delivered")
    state = client.get(f"/v1/batches/{batch_id}").json()["webhook"]
    assert (state["attempts"], state["last_status_code"]) == (2, 200)
    calls = receiver.requests_to("/batch")
    assert len(calls) == 2 and len({c.headers["webhook-id"] for c in calls}) == 1
    event = verify_webhook(calls[-1].headers, calls[-1].body, tenant_secret(client))
    assert event["type"] == "batch.completed"
    assert event["data"]["id"] == batch_id
    assert event["data"]["request_counts"] == {"total": 5, "completed": 5, "failed": 0}
