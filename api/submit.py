"""Validate an encode request and turn it into a queued job: shared by every submit route."""

from __future__ import annotations

import secrets
import time

from api.auth import Caller
from api.errors import error_for_code
from api.models import EncodeRequest, WebhookSpec
from api.state import Gateway
from common.adapters import exists_locally
from common.errors import (
    AdapterNotFound,
    InputTooLong,
    JobTimeout,
    ModelNotFound,
    NoItems,
    QuotaExceeded,
    TooManyItems,
    WebhooksDisabled,
    WorkerError,
)
from common.metrics import JOBS_SUBMITTED
from common.schemas import EncodeMessage, JobStatus, StoredJob, TokenIds
from common.ssrf import Target, parse_url


def new_job_id() -> str:
    """128 random bits: ids are capabilities, so they must not be guessable."""
    return "job_" + secrets.token_urlsafe(16)


def validate(gw: Gateway, model: str, request: EncodeRequest) -> None:
    """What is cheap to check: the shape of the request, before the caller is admitted."""
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


def webhook_target(gw: Gateway, who: Caller, webhook: WebhookSpec) -> Target:
    own_secret = who.key is not None and who.key.webhook_secret is not None
    if gw.settings.webhooks.secret is None and not own_secret:
        raise WebhooksDisabled("webhooks are not enabled here (no signing secret configured)")
    return parse_url(webhook.url)


async def admit(gw: Gateway, who: Caller, model: str) -> None:
    """The tenant's submit rate first: a refused request costs nothing more, and does not count
    against the model's backpressure limit."""
    await gw.rate.admit(who)
    gw.cluster.admit(model)


async def resolve_adapter(gw: Gateway, who: Caller, model: str, lora_id: str | None) -> str | None:
    """The adapter id the job's message carries: a registry adapter's revision, pinned now
    (`api.adapters`), so the job runs on it whatever is uploaded later; any other adapter as
    named, once found in the adapter directory (when that is where adapters come from)."""
    if lora_id is None:
        return None
    if (revision := await gw.adapters.resolve(who, lora_id, model)) is not None:
        return revision
    adapters = gw.settings.adapters
    checkable = adapters.check_at_submit and not adapters.remote
    if checkable and not exists_locally(adapters.dir, lora_id):
        raise AdapterNotFound(f"adapter {lora_id!r} not found")
    return lora_id


async def check_costly(
    gw: Gateway, model: str, request: EncodeRequest, webhook: Target | None
) -> TokenIds | None:
    """Only for admitted requests (after the adapter's existence, checked after the key's
    allowlist, so a refusal never tells which adapters exist): the webhook host's addresses,
    then the texts' token ids (with their lengths checked unless truncating)."""
    options = request.params.options
    if webhook is not None:
        await gw.checks.webhook_host(webhook)
    texts = [item.text for item in request.items]
    return await gw.checks.tokenize(model, texts, options.truncate)


def quota_error(
    refused: tuple[str, int], job: StoredJob, items_limit: int | None, jobs_limit: int | None
) -> QuotaExceeded:
    kind, count = refused
    if kind == "jobs":
        message = (
            f"{count} jobs of this tenant are unfinished for {job.model!r}; its share of that "
            f"model's queue is {jobs_limit}"
        )
    else:
        message = (
            f"{count} items of this API key are queued; {job.n_items} more would pass its "
            f"limit of {items_limit}"
        )
    return QuotaExceeded(message, retry_after=5)


async def submit(
    gw: Gateway,
    who: Caller,
    model: str,
    request: EncodeRequest,
    webhook: WebhookSpec | None = None,
    job_id: str | None = None,
) -> StoredJob:
    """Check what is cheap, authorize, admit (the caller's rate, backpressure), then check what
    is costly, route the job, then record and queue it within the caller's quotas in one step
    (no job is ever recorded without its message); if that step fails, the caller gets 503."""
    validate(gw, model, request)
    options = request.params.options
    who.may_use(options.lora_id)
    target = webhook_target(gw, who, webhook) if webhook is not None else None
    await admit(gw, who, model)
    lora_id = await resolve_adapter(gw, who, model, options.lora_id)
    tokens = await check_costly(gw, model, request, target)
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
    # Built from fields validated at the boundary (the request body): not validated again.
    message = EncodeMessage.model_construct(
        job_id=job.id,
        model=model,
        lora_id=lora_id,
        texts=[item.text for item in request.items],
        normalize=options.normalize,
        truncate=options.truncate,
        enqueued_at=now,
        token_ids=tokens,
    )
    share = gw.settings.limits.tenant_max_jobs()
    limits = (who.key.max_queued_items, share) if who.key else (None, None)
    route = gw.cluster.route(model, lora_id, job.id)
    raw = message.model_dump_json().encode()
    try:
        refused = await gw.store.create(job, raw, route.queue, *limits)
    except BaseException:  # a Redis error answers 503 (api.errors)
        gw.cluster.completed(job.id)
        raise
    if refused is not None:
        gw.cluster.completed(job.id)
        raise quota_error(refused, job, *limits)
    gw.cluster.published(model, job.id)
    JOBS_SUBMITTED.labels(model).inc()
    return job


async def submit_and_wait(
    gw: Gateway, who: Caller, model: str, request: EncodeRequest
) -> tuple[StoredJob, bytes]:
    """For the synchronous routes: the finished job and its vectors, or the job's own error; on
    timeout, 504 with the job id, so the caller can poll instead of resubmitting."""
    job = await submit(gw, who, model, request)
    done, result = await gw.waiter.wait(job.id, gw.settings.sync_timeout_s, who.tenant)
    if done is None or not done.status.terminal:
        raise JobTimeout(
            f"job {job.id} did not finish within {gw.settings.sync_timeout_s:g}s; "
            f"poll /v1/jobs/{job.id} for its result",
            job_id=job.id,
        )
    if done.status != JobStatus.SUCCEEDED:
        raise error_for_code(done.error_code or "", done.error_message or f"job {done.status}")
    if result is None:
        raise WorkerError(f"job {job.id} succeeded but its result has expired")
    return done, result
