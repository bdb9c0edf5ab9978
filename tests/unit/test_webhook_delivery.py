"""Webhook delivery against real receivers on loopback (hostile ones included), with the outbox
in fakeredis: the attempt deadline, the unread answer body, the delivery lease, the per-host
cap, expired jobs, and the sweep."""

from __future__ import annotations

import base64
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import fakeredis
import pytest
from pydantic import SecretStr
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from common import keys
from common.job_store import JobStore, encode_job
from common.job_view import webhook_view
from common.schemas import JobStatus, StoredJob
from common.settings import ApiKey, WebhookSettings
from common.webhook_secret import derive
from loraq import cli
from loraq.stack import wait_until
from loraq_client import verify_webhook
from tests.receiver import Answer, Receiver
from webhooks.delivery import OutboxSweeper, WebhookSender
from webhooks.outbox import Outbox

MASTER = "whsec_" + base64.b64encode(b"unit-test-master-secret-32-bytes").decode()
TTL_S = 60
SCHEDULE = [0.05, 0.05]


def settings(**overrides: Any) -> WebhookSettings:
    values: dict[str, Any] = {
        "secret": MASTER,
        "allow_networks": ["127.0.0.0/8"],
        "timeout_s": 1.0,
        "retry_schedule_s": SCHEDULE,
        "jitter": 0,
        "sweep_s": 0.05,
        **overrides,
    }
    return WebhookSettings.model_validate(values)


@pytest.fixture
def r() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis()


@pytest.fixture
def store(r: fakeredis.FakeRedis) -> JobStore:
    return JobStore(r, TTL_S)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


@pytest.fixture
def sender(r: fakeredis.FakeRedis, store: JobStore) -> Iterator[WebhookSender]:
    s = WebhookSender(store, Outbox(r), settings())
    yield s
    s.close()


def failed_job(
    r: fakeredis.FakeRedis, store: JobStore, job_id: str, url: str, tenant: str = "acme"
) -> None:
    """A job that has just failed with a webhook for it: its terminal transition put it in the
    outbox, due now."""
    job = StoredJob(
        id=job_id, status=JobStatus.QUEUED, model="m", n_items=1, created_at=time.time(),
        tenant=tenant, webhook_url=url, webhook_events="failed",
    )  # fmt: skip
    r.hset(keys.job(job_id), mapping=encode_job(job))
    r.expire(keys.job(job_id), TTL_S)
    assert store.fail(job_id, time.time(), "ENCODE_FAILED", "boom").webhook_due


def webhook_of(store: JobStore, job_id: str) -> dict[str, Any]:
    job = store.get(job_id)
    assert job is not None
    view = webhook_view(job)
    assert view is not None
    return view


# -- Item 3: deadline, unread body, lease, per-host cap --------------------------------------


def test_a_dripping_receiver_is_cut_off_at_the_attempt_deadline(
    r: fakeredis.FakeRedis, store: JobStore, sender: WebhookSender, receiver: Receiver
) -> None:
    """Per-read timeouts never fire on a byte every 0.1 s; the 1 s deadline on the whole
    attempt does, and the connection is dropped (the receiver's drip ends)."""
    receiver.script["/drip"] = [Answer(200, headers={"x-pad": "p" * 60}, drip_s=0.1)]
    failed_job(r, store, "job_drip", receiver.url("/drip"))
    outcome = sender.deliver("job_drip")
    assert (outcome.result, outcome.status_code) == ("retry", None)
    assert outcome.error is not None and outcome.error.startswith("Timeout")
    wait_until(lambda: receiver.answered["/drip"] == 1, 30, "the drip to end")
    assert webhook_of(store, "job_drip")["status"] == "pending"


def test_a_huge_answer_body_is_not_read(
    r: fakeredis.FakeRedis, store: JobStore, sender: WebhookSender, receiver: Receiver
) -> None:
    body = 512 * 1024 * 1024
    receiver.script["/huge"] = [Answer(200, body_bytes=body)]
    failed_job(r, store, "job_huge", receiver.url("/huge"))
    assert sender.deliver("job_huge").result == "delivered"
    wait_until(lambda: receiver.answered["/huge"] == 1, 30, "the answer to end")
    # What went out before the sender hung up fits in the sockets' buffers.
    assert receiver.body_sent["/huge"] < 64 * 1024 * 1024


def test_one_delivery_never_runs_twice_at_once(
    r: fakeredis.FakeRedis, store: JobStore, sender: WebhookSender, receiver: Receiver
) -> None:
    release = threading.Event()
    receiver.script["/held"] = [Answer(200, hold=release)]
    failed_job(r, store, "job_held", receiver.url("/held"))
    published: list[str] = []
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(sender.deliver, "job_held")
        wait_until(lambda: len(receiver.requests_to("/held")) == 1, 30, "the attempt")
        now = time.time()
        # The lease moved the entry past the attempt's deadline: no sweep (of any process)
        # publishes it, and another task for it does nothing.
        assert (r.zscore(keys.WEBHOOK_OUTBOX, "job_held") or 0) > now + 1.0
        assert r.pttl(keys.webhook_lease("job_held")) > 1000
        assert OutboxSweeper(Outbox(r), published.append, 60).sweep(now) == 0
        assert sender.deliver("job_held").result == "not_due"
        release.set()
        assert first.result().result == "delivered"
    assert len(receiver.requests_to("/held")) == 1
    assert published == []
    assert r.exists(keys.webhook_lease("job_held")) == 0


def test_a_busy_host_gets_its_cap_and_other_hosts_go_on(
    r: fakeredis.FakeRedis, store: JobStore
) -> None:
    release = threading.Event()
    capped = WebhookSender(store, Outbox(r), settings(max_in_flight_per_host=1))
    with Receiver("127.0.0.1") as slow, Receiver("127.0.0.2") as other, ThreadPoolExecutor(1) as p:
        slow.script["/slow"] = [Answer(200, hold=release)]
        failed_job(r, store, "job_a1", slow.url("/slow"))
        failed_job(r, store, "job_a2", slow.url("/slow"))
        failed_job(r, store, "job_b", other.url("/b"), tenant="globex")
        first: Future[Any] = p.submit(capped.deliver, "job_a1")
        wait_until(lambda: len(slow.requests_to("/slow")) == 1, 30, "the first attempt")
        assert capped.deliver("job_a2").result == "deferred"
        assert (r.zscore(keys.WEBHOOK_OUTBOX, "job_a2") or 0) > time.time()
        assert capped.deliver("job_b").result == "delivered"
        release.set()
        assert first.result().result == "delivered"
        # Deferred, not dropped: it runs once its turn comes.
        wait_until(lambda: capped.deliver("job_a2").result == "delivered", 30, "its turn")
    assert len(slow.requests_to("/slow")) == 2
    capped.close()


# -- Item 4: expired jobs, TTL while pending, a fair sweep -------------------------------------


def test_a_delivery_whose_job_expired_leaves_the_outbox(
    r: fakeredis.FakeRedis, store: JobStore, sender: WebhookSender
) -> None:
    r.zadd(keys.WEBHOOK_OUTBOX, {"job_gone": 1.0})
    assert sender.deliver("job_gone").result == "dropped"
    assert r.zscore(keys.WEBHOOK_OUTBOX, "job_gone") is None


def test_a_pending_delivery_keeps_its_job_until_its_next_attempt(
    r: fakeredis.FakeRedis, store: JobStore, receiver: Receiver
) -> None:
    """The schedule outlasts the job's TTL: the job (and its result) must still be there when
    the retry comes due, and a full TTL after it for the outcome to be read."""
    day = 24 * 3600
    long = WebhookSender(store, Outbox(r), settings(retry_schedule_s=[3 * day]))
    receiver.script["/down"] = [Answer(500)]
    failed_job(r, store, "job_long", receiver.url("/down"))
    r.set(keys.job_result("job_long"), b"v", ex=TTL_S)
    assert long.deliver("job_long").result == "retry"
    for key in (keys.job("job_long"), keys.job_result("job_long")):
        assert r.ttl(key) >= 3 * day + TTL_S - 5
    long.close()


def test_the_sweep_pages_past_any_number_of_entries_oldest_first(
    r: fakeredis.FakeRedis, store: JobStore
) -> None:
    """600 stale entries ahead (more than a page) and 1200 tied on one score: each entry is
    published once, oldest first, and again only once an attempt has moved it."""
    stale = {f"job_stale{i:04d}": float(i) for i in range(600)}
    tied = {f"job_tied{i:04d}": 700.0 for i in range(1200)}
    r.zadd(keys.WEBHOOK_OUTBOX, {**stale, **tied, "job_live": 800.0})
    r.zadd(keys.WEBHOOK_OUTBOX, {"job_later": 2000.0})
    published: list[str] = []
    sweeper = OutboxSweeper(Outbox(r), published.append, hold_s=60, page=500)
    assert sweeper.sweep(now=1000.0) == 1801
    assert published[:600] == sorted(stale)
    assert sorted(published[600:1800]) == sorted(tied)
    assert published[-1] == "job_live"
    assert sweeper.sweep(now=1001.0) == 0  # held: their tasks are queued
    r.zadd(keys.WEBHOOK_OUTBOX, {"job_live": 900.0})  # e.g. deferred, due again
    assert sweeper.sweep(now=1002.0) == 1
    assert sweeper.sweep(now=1100.0) == 1801  # the hold ran out: tasks lost, publish again


# -- Item 6: Retry-After ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", ["99999999999999", "9" * 5000, "\u00b2", "\u0663", "1e3", "-5", "Fri, 31 Dec 9999"]
)
def test_any_retry_after_keeps_the_schedule_and_the_job_view(
    r: fakeredis.FakeRedis, store: JobStore, sender: WebhookSender, receiver: Receiver, value: str
) -> None:
    """An absurd value is clamped to the schedule's longest delay; a non-ASCII digit (`²` is
    `isdigit` but not a number `float` takes) or a malformed value is ignored. Either way the
    attempt is recorded and the job view renders."""
    receiver.script["/busy"] = [Answer(503, headers={"retry-after": value})]
    failed_job(r, store, "job_busy", receiver.url("/busy"))
    before = time.time()
    outcome = sender.deliver("job_busy")
    assert (outcome.result, outcome.status_code) == ("retry", 503)
    job = store.get("job_busy")
    assert job is not None and job.webhook_next_attempt_at is not None
    assert job.webhook_next_attempt_at <= time.time() + max(SCHEDULE)
    assert job.webhook_next_attempt_at >= before
    assert webhook_of(store, "job_busy")["next_attempt_at"] is not None


def test_the_job_view_survives_any_stored_next_attempt() -> None:
    for stored in (1e300, float("inf"), float("nan"), 99999999999999.0 + 1e9):
        job = StoredJob(
            id="job_x", status=JobStatus.FAILED, model="m", n_items=1, created_at=0.0,
            webhook_url="https://example.com/h", webhook_next_attempt_at=stored,
        )  # fmt: skip
        view = webhook_view(job)
        assert view is not None and view["next_attempt_at"] is None


# -- Item 10: a secret per tenant ------------------------------------------------------------


def test_each_tenant_signs_with_its_own_secret(
    r: fakeredis.FakeRedis, store: JobStore, receiver: Receiver
) -> None:
    own = "whsec_" + base64.b64encode(b"globex-explicit-secret-32-bytes!").decode()
    tenant_keys = [
        ApiKey(tenant="acme", sha256="a" * 64),
        ApiKey(tenant="globex", sha256="b" * 64, webhook_secret=own),
    ]
    signer = WebhookSender(store, Outbox(r), settings(), tenant_keys)
    failed_job(r, store, "job_acme", receiver.url("/acme"), tenant="acme")
    failed_job(r, store, "job_globex", receiver.url("/globex"), tenant="globex")
    assert signer.deliver("job_acme").result == "delivered"
    assert signer.deliver("job_globex").result == "delivered"
    signer.close()
    acme, globex = receiver.requests_to("/acme")[0], receiver.requests_to("/globex")[0]

    acme_secret = derive(SecretStr(MASTER), "acme")
    assert verify_webhook(acme.headers, acme.body, acme_secret)["data"]["id"] == "job_acme"
    assert Webhook(own).verify(globex.body, globex.headers)["data"]["id"] == "job_globex"
    # Neither the master secret nor another tenant's secret verifies acme's delivery.
    for wrong in (MASTER, own, derive(SecretStr(MASTER), "globex")):
        with pytest.raises(WebhookVerificationError):
            Webhook(wrong).verify(acme.body, acme.headers)


def test_derived_secrets_are_standard_distinct_and_stable() -> None:
    master = SecretStr(MASTER)
    secrets = {derive(master, t) for t in ("acme", "globex", "local", "")}
    assert len(secrets) == 4
    assert derive(master, "acme") == derive(master, "acme")
    for secret in secrets:
        assert secret.startswith("whsec_")
        assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
        Webhook(secret)  # any Standard Webhooks library takes it


def test_keys_create_prints_the_tenants_webhook_secret(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in [n for n in os.environ if n.upper().startswith("LORAQ_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("LORAQ_WEBHOOKS__SECRET", MASTER)
    assert cli.main(["keys", "create", "--tenant", "acme"]) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 2  # the key and its entry, as before
    assert derive(SecretStr(MASTER), "acme") in err
    assert MASTER not in out + err


def test_a_malformed_master_secret_fails_at_start_up() -> None:
    with pytest.raises(ValueError, match="whsec_ and base64"):
        settings(secret="whsec_not base64!")
