"""Validate an encode request and turn it into a queued job: shared by every submit route."""

from __future__ import annotations

import contextlib
import logging
import secrets
import time

from anyio import to_thread

from api.auth import Caller
from api.errors import error_for_code
from api.state import Gateway
from common.adapters import exists_locally
from common.errors import (
    AdapterNotFound,
    InputTooLong,
    JobTimeout,
    ModelNotFound,
    NoItems,
    QueueUnavailable,
    QuotaExceeded,
    TooManyItems,
    WebhooksDisabled,
    WorkerError,
)
from common.metrics import JOBS_FINISHED, JOBS_SUBMITTED
from common.model_files import check_not_truncated
from common.schemas import (
    EncodeMessage,
    EncodeRequest,
    JobStatus,
    StoredJob,
    WebhookSpec,
    validate_lora_id,
)
from common.ssrf import Unresolvable, parse_networks, parse_url, resolve

log = logging.getLogger(__name__)


def new_job_id() -> str:
    """128 random bits: ids are capabilities, so they must not be guessable."""
    return "job_" + secrets.token_urlsafe(16)


async def validate(gw: Gateway, model: str, request: EncodeRequest) -> None:
    s = gw.settings
    if model not in s.models:
        raise ModelNotFound(f"model {model!r} is not served here; available: {sorted(s.models)}")
    items = request.items
    if not items:
        raise NoItems("items is empty: send at least one item")
    if len(items) > s.limits.max_items_per_job:
        raise TooManyItems(
            f"{len(items)} items in one job; the limit is {s.limits.max_items_per_job}"
        )
    for i, item in enumerate(items):
        if len(item.text) > s.limits.max_text_chars:
            raise InputTooLong(
                f"item {i} has {len(item.text)} characters; the limit is {s.limits.max_text_chars}"
            )
    options = request.params.options
    if options.lora_id is not None:
        validate_lora_id(options.lora_id)
        check = s.adapters.check_at_submit and not s.adapters.remote
        if check and not exists_locally(s.adapters.dir, options.lora_id):
            raise AdapterNotFound(f"adapter {options.lora_id!r} not found")
    if not options.truncate and (loaded := await to_thread.run_sync(gw.tokenizer, model)):
        tokenizer, limit = loaded
        texts = [item.text for item in items]
        encodings = await to_thread.run_sync(tokenizer.encode_batch, texts)
        check_not_truncated(encodings, limit)


async def check_webhook(gw: Gateway, who: Caller, webhook: WebhookSpec) -> None:
    """Refuse at submit what can be known now; a host that does not resolve yet is left to the
    delivery, which checks again (and fails the delivery with the same code)."""
    own_secret = who.key is not None and who.key.webhook_secret is not None
    if gw.settings.webhooks.secret is None and not own_secret:
        raise WebhooksDisabled("webhooks are not enabled here (no signing secret configured)")
    target = parse_url(webhook.url)
    allowed = parse_networks(gw.settings.webhooks.allow_networks)
    with contextlib.suppress(Unresolvable):
        await to_thread.run_sync(resolve, target, allowed)


async def submit(
    gw: Gateway,
    who: Caller,
    model: str,
    request: EncodeRequest,
    webhook: WebhookSpec | None = None,
    job_id: str | None = None,
) -> StoredJob:
    """Validate, admit (backpressure, the caller's quotas), record the job, route it, publish it.
    If publishing fails the job is marked failed and the caller gets 503, so no job is left
    looking queued with no message behind it."""
    await validate(gw, model, request)
    options = request.params.options
    who.may_use(options.lora_id)
    if webhook is not None:
        await check_webhook(gw, who, webhook)
    gw.routing.admit(model)
    await gw.rate.admit(who)
    now = time.time()
    ids = [item.id for item in request.items]
    job = StoredJob(
        id=job_id or new_job_id(),
        status=JobStatus.QUEUED,
        model=model,
        lora_id=options.lora_id,
        n_items=len(request.items),
        item_ids=ids if any(i is not None for i in ids) else None,
        created_at=now,
        webhook_url=webhook.url if webhook else None,
        webhook_events=" ".join(webhook.events) if webhook else None,
        tenant=who.tenant,
    )
    message = EncodeMessage(
        job_id=job.id,
        model=model,
        lora_id=options.lora_id,
        texts=[item.text for item in request.items],
        normalize=options.normalize,
        truncate=options.truncate,
        enqueued_at=now,
    )
    limit = who.key.max_queued_items if who.key else None
    queued = await gw.store.create(job, message.model_dump_json().encode(), limit)
    if queued is not None:
        raise QuotaExceeded(
            f"{queued} items of this API key are queued; {job.n_items} more would pass its "
            f"limit of {limit}",
            retry_after=5,
        )
    route = gw.routing.route(model, options.lora_id, job.id)
    try:
        await gw.publisher.encode(message, route.queue)
    except Exception as exc:
        log.exception("publishing job %s failed", job.id)
        gw.routing.completed(job.id)
        error = QueueUnavailable(f"the job queue is unavailable: {exc}")
        await gw.store.fail(job.id, time.time(), error.code, error.message)
        JOBS_FINISHED.labels(model, "failed", error.code).inc()
        raise error from exc
    gw.routing.published(model, job.id)
    JOBS_SUBMITTED.labels(model).inc()
    return job


async def submit_and_wait(
    gw: Gateway, who: Caller, model: str, request: EncodeRequest
) -> tuple[StoredJob, bytes]:
    """For the synchronous routes: the finished job and its vectors, or the job's own error; on
    timeout, 504 with the job id, so the caller can poll instead of resubmitting."""
    job = await submit(gw, who, model, request)
    done = await gw.waiter.wait(job.id, gw.settings.sync_timeout_s)
    if done is None:
        raise JobTimeout(
            f"job {job.id} did not finish within {gw.settings.sync_timeout_s:g}s; "
            f"poll /v1/jobs/{job.id} for its result",
            job_id=job.id,
        )
    if done.status != JobStatus.SUCCEEDED:
        raise error_for_code(done.error_code or "", done.error_message or f"job {done.status}")
    result = await gw.store.get_result(job.id)
    if result is None:
        raise WorkerError(f"job {job.id} succeeded but its result has expired")
    return done, result
