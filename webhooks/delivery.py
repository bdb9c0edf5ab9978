"""Signed completion webhooks (Standard Webhooks) for jobs and batches: one delivery attempt at
a time.

The outbox holds job ids and batch ids alike (`batch_...`): a batch's terminal move queues its
delivery as a job's terminal transition does, and both go through the same claim, signing,
retry schedule and delivery log (the `webhook_*` fields of the job's or the batch's record).

The terminal transition of a job with a webhook puts the job in the outbox (a zset scored by when
the next attempt is due) in the same Lua step, so a delivery is queued exactly once per job
whatever happened to its compute, and cannot be lost to a crash. Attempts run in the webhook
worker (its own Celery queue and process), never in an encode worker, so a slow or dead receiver
cannot slow encoding.

An attempt first claims the delivery (`webhooks.outbox`: due, not in flight elsewhere, its receiver
host under its cap, else deferred). Then: resolve the host and check every address
(`common.ssrf`), connect to the checked address (no second lookup, so DNS rebinding cannot
redirect it), never follow redirects, sign `id.timestamp.body` with HMAC-SHA256 under the
tenant's secret (`common.webhook_secret`; `webhook-id` is the same on every retry, so receivers
can deduplicate), all of it within `timeout_s` of wall time (`webhooks.http`). 2xx:
delivered. 410 Gone: failed, no retries. Anything else, a timeout or a connection error: retry
after the next delay of the schedule (with jitter, and at least the receiver's `Retry-After` on
429/503, clamped to the schedule's longest delay), until the schedule runs out. A delivery whose
job has expired leaves the outbox; while one is pending, its job's keys are kept past their TTL.
"""

from __future__ import annotations

import email.utils
import logging
import math
import random
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from standardwebhooks.webhooks import Webhook

from common import keys, metrics
from common.batch_record import StoredBatch, decode_batch
from common.errors import WebhookUrlForbidden
from common.job_store import JobStore
from common.job_view import job_json, job_view
from common.schemas import StoredJob, iso
from common.settings import ApiKey, WebhookSettings
from common.ssrf import Unresolvable, parse_networks, parse_url
from common.webhook_secret import tenant_secret
from webhooks.http import Answer, Poster
from webhooks.outbox import Claim, Outbox

log = logging.getLogger(__name__)

USER_AGENT = "loraq-webhooks/0.1"
#: A delivery's lease outlives its attempt's deadline by this much: the Redis round trips and
#: the payload around the attempt, so a live attempt never loses its lease.
LEASE_MARGIN_S = 30.0


@dataclass(frozen=True)
class Outcome:
    #: delivered | retry | failed (an attempt ran); not_due | busy | deferred | dropped (none)
    result: str
    status_code: int | None = None
    error: str | None = None


def message_id(job_id: str) -> str:
    return f"msg_{job_id}"


@dataclass(frozen=True)
class Delivery:
    """What one outbox entry delivers: a job's end or a batch's."""

    id: str
    tenant: str
    url: str
    attempts: int
    job: StoredJob | None = None
    batch: StoredBatch | None = None


def _http_date_delay(text: str, now: float) -> float | None:
    parsed = email.utils.parsedate_tz(text)
    if parsed is None:
        return None
    try:
        return email.utils.mktime_tz(parsed) - now
    except (OverflowError, ValueError):
        return None


def retry_after_seconds(value: str | None, now: float, longest: float) -> float | None:
    """`Retry-After` in seconds from `now`, in [0, longest]: RFC 9110's delay-seconds (ASCII
    digits only: `str.isdigit` alone takes other scripts' digits, which `float` refuses) or an
    HTTP-date. Absent or malformed: None, and the schedule alone decides."""
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        seconds: float | None = float(text)  # any length: huge values become inf, clamped below
    else:
        seconds = _http_date_delay(text, now)
    return None if seconds is None else min(max(seconds, 0.0), longest)


def _describe(exc: httpx.HTTPError) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _receiver_host(url: str) -> str:
    """What the per-host cap counts by; a URL that no longer parses fails its attempt anyway."""
    try:
        return parse_url(url).host
    except WebhookUrlForbidden:
        return ""


class WebhookSender:
    def __init__(
        self,
        store: JobStore,
        outbox: Outbox,
        settings: WebhookSettings,
        tenant_keys: Sequence[ApiKey] = (),
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self._store = store
        self._outbox = outbox
        self._settings = settings
        self._tenant_keys = tuple(tenant_keys)
        self._signers: dict[str, Webhook | None] = {}
        self._clock = clock
        self._rng = rng or random.Random()
        self._poster = Poster(
            parse_networks(settings.allow_networks), settings.timeout_s, settings.concurrency
        )
        self.lease_s = settings.timeout_s + LEASE_MARGIN_S

    def close(self) -> None:
        self._poster.close()

    def _load(self, entry: str) -> Delivery | None:
        if entry.startswith("batch_"):
            raw = self._store.redis.hgetall(keys.batch(entry))
            batch = decode_batch(raw) if raw else None
            if batch is None or batch.webhook_url is None:
                return None
            return Delivery(
                entry, batch.tenant, batch.webhook_url, batch.webhook_attempts or 0, batch=batch
            )
        job = self._store.get(entry)
        if job is None or job.webhook_url is None:
            return None
        return Delivery(entry, job.tenant or "", job.webhook_url, job.webhook_attempts or 0, job)

    def deliver(self, entry: str) -> Outcome:
        """One attempt, if one is due, none is in flight for this entry (a job or batch id) and
        its receiver host has room; a delivery whose job or batch is gone leaves the outbox."""
        delivery = self._load(entry)
        if delivery is None:
            self._outbox.drop(entry)
            return Outcome("dropped")
        host = _receiver_host(delivery.url)
        token = secrets.token_hex(8)
        now = self._clock()
        defer_until = now + self._settings.sweep_s * self._rng.uniform(1, 2)
        claim = self._outbox.claim(
            entry, host, token, now, self.lease_s, self._settings.max_in_flight_per_host,
            defer_until,
        )  # fmt: skip
        if claim is not Claim.CLAIMED:
            return Outcome(claim.name.lower())
        try:
            claimed = self._load(entry)  # as of the claim: the attempt count is current
            if claimed is None:
                self._outbox.drop(entry)
                return Outcome("dropped")
            return self._attempt(claimed, now)
        finally:
            self._outbox.release(entry, host, token)

    def _attempt(self, delivery: Delivery, now: float) -> Outcome:
        attempt = delivery.attempts + 1
        try:
            answer = self._post(delivery, now)
        except Unresolvable as exc:  # DNS can be down for a while: try again later
            outcome = Outcome("retry", None, exc.message)
        except WebhookUrlForbidden as exc:
            outcome = Outcome("failed", None, exc.message)
        except TimeoutError:
            outcome = Outcome(
                "retry", None, f"Timeout: no answer within {self._poster.timeout_s} s"
            )
        except httpx.HTTPError as exc:
            outcome = Outcome("retry", None, _describe(exc))
        except Exception as exc:  # a bug costs an attempt, so the schedule still ends
            log.exception("webhook attempt for %s failed", delivery.id)
            outcome = Outcome("retry", None, f"internal error ({type(exc).__name__})")
        else:
            return self._answered(delivery, attempt, answer, now)
        return self._record(delivery, attempt, outcome, None, now)

    def _answered(self, delivery: Delivery, attempt: int, answer: Answer, now: float) -> Outcome:
        code = answer.status_code
        if 200 <= code < 300:
            return self._record(delivery, attempt, Outcome("delivered", code), None, now)
        if code == 410:
            gone = Outcome("failed", code, "410 Gone: receiver unsubscribed")
            return self._record(delivery, attempt, gone, None, now)
        wait = None
        if code in (429, 503):
            longest = max(self._settings.retry_schedule_s, default=0.0)
            wait = retry_after_seconds(answer.retry_after, now, longest)
        return self._record(delivery, attempt, Outcome("retry", code, f"HTTP {code}"), wait, now)

    def _next_attempt_at(self, attempt: int, wait: float | None) -> float:
        spread = self._settings.jitter
        delay = self._settings.retry_schedule_s[attempt - 1] * self._rng.uniform(
            1 - spread, 1 + spread
        )
        return self._clock() + max(delay, wait or 0.0)

    def _record(
        self, delivery: Delivery, attempt: int, outcome: Outcome, wait: float | None, now: float
    ) -> Outcome:
        next_at = None
        if outcome.result == "retry":
            if attempt > len(self._settings.retry_schedule_s):
                outcome = Outcome(
                    "failed", outcome.status_code, f"{outcome.error}; no retries left"
                )
            else:
                next_at = self._next_attempt_at(attempt, wait)
        status = "pending" if outcome.result == "retry" else outcome.result
        fields = {
            "webhook_status": status,
            "webhook_attempts": attempt,
            "webhook_last_status_code": outcome.status_code,
            "webhook_last_error": outcome.error,
            "webhook_next_attempt_at": next_at,
        }
        # The record outlives its next attempt by a full TTL, so the outcome stays readable.
        keep_s = self._store.ttl_s + (0 if next_at is None else math.ceil(max(next_at - now, 0)))
        if delivery.batch is not None:
            self._store.record_batch_webhook(delivery.id, fields, next_at, keep_s)
        else:
            self._store.record_webhook(delivery.id, fields, next_at, keep_s)
        metrics.WEBHOOK_ATTEMPTS.labels(outcome.result).inc()
        log.info(
            "webhook for %s: attempt %d %s %s",
            delivery.id, attempt, outcome.result, outcome.error or "",
        )  # fmt: skip
        return outcome

    def payload(self, delivery: Delivery, now: float) -> bytes:
        if delivery.batch is not None:
            batch = delivery.batch.batch
            data = batch.model_dump(mode="json")
            return job_json({"type": f"batch.{batch.status}", "timestamp": iso(now), "data": data})
        job = delivery.job
        assert job is not None
        base = (self._settings.public_base_url or "").rstrip("/")
        self_url = f"{base}/v1/jobs/{job.id}"
        result = self._store.get_result(job.id)
        view: dict[str, Any]
        if result is not None and len(result) <= self._settings.inline_result_max_bytes:
            view = job_view(job, result, self_url)
        else:
            view = job_view(job, None, self_url)
            if result is not None:
                view["links"]["result"] = self_url
        view.pop("webhook")
        event = {"type": f"job.{job.status.value}", "timestamp": iso(now), "data": view}
        return job_json(event)

    def _signer(self, tenant: str) -> Webhook | None:
        if tenant not in self._signers:
            secret = tenant_secret(self._settings.secret, self._tenant_keys, tenant)
            self._signers[tenant] = None if secret is None else Webhook(secret)
        return self._signers[tenant]

    def _post(self, delivery: Delivery, now: float) -> Answer:
        target = parse_url(delivery.url)
        signer = self._signer(delivery.tenant)
        if signer is None:
            raise WebhookUrlForbidden("no webhook signing secret is configured for this tenant")
        body = self.payload(delivery, now)
        msg_id = message_id(delivery.id)
        stamp = datetime.fromtimestamp(int(now), UTC)
        headers = {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "host": target.authority,
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(now)),
            "webhook-signature": signer.sign(msg_id, stamp, body.decode()),
        }
        return self._poster.post(target, body, headers)


class OutboxSweeper:
    """Publishes deliveries that have come due (retries, deferrals, leases of lost attempts,
    and any whose immediate task was lost), oldest first, through every page of due entries,
    so no number of entries ahead can starve the rest. An entry is published again only once
    its score has changed (an attempt moved it) or `hold_s` has passed (its task was lost); an
    attempt claims its delivery for itself, so an extra publication is harmless."""

    def __init__(
        self, outbox: Outbox, publish: Callable[[str], None], hold_s: float, page: int = 500
    ) -> None:
        self._outbox = outbox
        self._publish = publish
        self._hold_s = hold_s
        self._page = page
        self._published: dict[str, tuple[float, float]] = {}  # job id -> (score, when)

    def sweep(self, now: float) -> int:
        self._published = {
            job_id: seen for job_id, seen in self._published.items() if now - seen[1] < self._hold_s
        }
        count = 0
        for job_id, score in self._outbox.due(now, self._page):
            seen = self._published.get(job_id)
            if seen is not None and seen[0] == score:
                continue
            self._publish(job_id)
            self._published[job_id] = (score, now)
            count += 1
        return count
