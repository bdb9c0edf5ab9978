"""Signed job-completion webhooks (Standard Webhooks): one delivery attempt at a time.

The terminal transition of a job with a webhook puts the job in the outbox (a zset scored by when
the next attempt is due) in the same Lua step, so a delivery is queued exactly once per job
whatever happened to its compute, and cannot be lost to a crash. Attempts run in the webhook
worker (its own Celery queue and process), never in an encode worker, so a slow or dead receiver
cannot slow encoding.

An attempt: resolve the host and check every address (`common.ssrf`), connect to the checked
address (no second lookup, so DNS rebinding cannot redirect it), never follow redirects, sign
`id.timestamp.body` with HMAC-SHA256 (`webhook-id` is the same on every retry, so receivers can
deduplicate). 2xx: delivered. 410 Gone: failed, no retries. Anything else, a timeout or a
connection error: retry after the next delay of the schedule (with jitter, and at least the
receiver's `Retry-After` on 429/503), until the schedule runs out.
"""

from __future__ import annotations

import email.utils
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from standardwebhooks.webhooks import Webhook

from common import keys, metrics
from common.errors import WebhookUrlForbidden
from common.job_view import job_json, job_view
from common.jobs import JobStore
from common.schemas import StoredJob, iso
from common.settings import ApiKey, WebhookSettings
from common.ssrf import IPAddress, Unresolvable, parse_networks, parse_url, resolve

log = logging.getLogger(__name__)

USER_AGENT = "loraq-webhooks/0.1"


@dataclass(frozen=True)
class Outcome:
    result: str  # delivered | retry | failed | skipped
    status_code: int | None = None
    error: str | None = None


def message_id(job_id: str) -> str:
    return f"msg_{job_id}"


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """`Retry-After` as seconds or an HTTP date."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value)
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - now)
    except (TypeError, ValueError):
        return None


class WebhookSender:
    def __init__(
        self,
        store: JobStore,
        settings: WebhookSettings,
        tenant_keys: Sequence[ApiKey] = (),
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self._store = store
        self._settings = settings
        # Each tenant's own secret if its API key has one, else the global secret.
        self._default = Webhook(settings.secret.get_secret_value()) if settings.secret else None
        self._signers = {
            k.tenant: Webhook(k.webhook_secret.get_secret_value())
            for k in tenant_keys
            if k.webhook_secret is not None
        }
        self._allowed = parse_networks(settings.allow_networks)
        self._clock = clock
        self._rng = rng or random.Random()
        self._http = httpx.Client(timeout=settings.timeout_s, follow_redirects=False)

    def close(self) -> None:
        self._http.close()

    def deliver(self, job_id: str) -> Outcome:
        """One attempt, if one is due and no other is in flight for this job."""
        lock_ms = int((self._settings.timeout_s + 10) * 1000)
        client = self._store.client
        if not client.set(keys.webhook_lock(job_id), "1", nx=True, px=lock_ms):
            return Outcome("skipped")
        try:
            job = self._store.get(job_id)
            due = self._store.webhook_due_at(job_id)
            now = self._clock()
            if job is None or job.webhook_url is None or due is None or due > now:
                return Outcome("skipped")
            return self._attempt(job, now)
        finally:
            client.delete(keys.webhook_lock(job_id))

    def _attempt(self, job: StoredJob, now: float) -> Outcome:
        attempt = (job.webhook_attempts or 0) + 1
        try:
            response = self._send(job, now)
        except Unresolvable as exc:  # DNS can be down for a while: try again later
            return self._record(job, attempt, Outcome("retry", None, exc.message), None)
        except WebhookUrlForbidden as exc:
            return self._record(job, attempt, Outcome("failed", None, exc.message), None)
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            return self._record(job, attempt, Outcome("retry", None, error), None)
        code = response.status_code
        if 200 <= code < 300:
            return self._record(job, attempt, Outcome("delivered", code), None)
        if code == 410:
            return self._record(
                job, attempt, Outcome("failed", code, "410 Gone: receiver unsubscribed"), None
            )
        wait = (
            retry_after_seconds(response.headers.get("retry-after"), now)
            if code in (429, 503)
            else None
        )
        return self._record(job, attempt, Outcome("retry", code, f"HTTP {code}"), wait)

    def _record(
        self, job: StoredJob, attempt: int, outcome: Outcome, wait: float | None
    ) -> Outcome:
        next_at = None
        if outcome.result == "retry":
            schedule = self._settings.retry_schedule_s
            if attempt > len(schedule):
                outcome = Outcome(
                    "failed", outcome.status_code, f"{outcome.error}; no retries left"
                )
            else:
                spread = self._settings.jitter
                delay = schedule[attempt - 1] * self._rng.uniform(1 - spread, 1 + spread)
                next_at = self._clock() + max(delay, wait or 0.0)
        status = "pending" if outcome.result == "retry" else outcome.result
        fields = {
            "webhook_status": status,
            "webhook_attempts": attempt,
            "webhook_last_status_code": outcome.status_code,
            "webhook_last_error": outcome.error,
            "webhook_next_attempt_at": next_at,
        }
        self._store.record_webhook(job.id, fields, next_at)
        metrics.WEBHOOK_ATTEMPTS.labels(outcome.result).inc()
        log.info(
            "webhook for %s: attempt %d %s %s", job.id, attempt, outcome.result, outcome.error or ""
        )
        return outcome

    def payload(self, job: StoredJob, now: float) -> bytes:
        base = (self._settings.public_base_url or "").rstrip("/")
        self_url = f"{base}/v1/jobs/{job.id}"
        result = self._store.client.get(keys.job_result(job.id))
        data: dict[str, Any]
        if isinstance(result, bytes) and len(result) <= self._settings.inline_result_max_bytes:
            data = job_view(job, result, self_url)
        else:
            data = job_view(job, None, self_url)
            if result is not None:
                data["links"]["result"] = self_url
        data.pop("webhook")
        event = {"type": f"job.{job.status.value}", "timestamp": iso(now), "data": data}
        return job_json(event)

    def _send(self, job: StoredJob, now: float) -> httpx.Response:
        assert job.webhook_url is not None
        target = parse_url(job.webhook_url)
        address = resolve(target, self._allowed)
        signer = self._signers.get(job.tenant or "", self._default)
        if signer is None:
            raise WebhookUrlForbidden("no webhook signing secret is configured for this tenant")
        body = self.payload(job, now)
        msg_id = message_id(job.id)
        stamp = datetime.fromtimestamp(int(now), UTC)
        headers = {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "host": target.host if target.port in (80, 443) else f"{target.host}:{target.port}",
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(now)),
            "webhook-signature": signer.sign(msg_id, stamp, body.decode()),
        }
        extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
        url = f"{target.scheme}://{_host(address)}:{target.port}{target.path}"
        return self._http.post(url, content=body, headers=headers, extensions=extensions)


def _host(address: IPAddress) -> str:
    return f"[{address}]" if address.version == 6 else str(address)


class OutboxSweeper:
    """Publishes deliveries that have come due (retries, and any whose immediate task was
    lost); an attempt checks for itself that it is due, so extra publications are harmless."""

    def __init__(self, store: JobStore, publish: Callable[[str], None], hold_s: float) -> None:
        self._store = store
        self._publish = publish
        self._hold_s = hold_s
        self._published: dict[str, float] = {}

    def sweep(self, now: float, limit: int = 500) -> int:
        self._published = {j: t for j, t in self._published.items() if now - t < self._hold_s}
        count = 0
        for job_id in self._store.due_webhooks(now, limit):
            if job_id not in self._published:
                self._publish(job_id)
                self._published[job_id] = now
                count += 1
        return count
