"""Every failure a user can see, one class each, with a stable UPPER_SNAKE code.

The same vocabulary serves HTTP answers (`{"error": {"code", "message"}}`) and failed jobs
(`job.error`), so a client handles `ADAPTER_NOT_FOUND` the same whether the gateway could check
the adapter at submit or a worker found out later. `http_status` is what the gateway answers when
it raises the error itself. `Retryable` errors are worth trying again unchanged; `Permanent` ones
are not.
"""

from __future__ import annotations

from typing import ClassVar


class LoraqError(Exception):
    code: ClassVar[str] = "INTERNAL_ERROR"
    http_status: ClassVar[int] = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


class Retryable(LoraqError):
    """Trying again later, unchanged, can succeed."""


class Permanent(LoraqError):
    """The same request fails the same way every time."""


class InvalidJson(Permanent):
    code = "INVALID_JSON"
    http_status = 400


class UnsupportedMediaType(Permanent):
    code = "UNSUPPORTED_MEDIA_TYPE"
    http_status = 415


class InvalidInput(Permanent):
    code = "INVALID_INPUT"
    http_status = 422


class NoItems(Permanent):
    code = "NO_ITEMS"
    http_status = 422


class TooManyItems(Permanent):
    code = "TOO_MANY_ITEMS"
    http_status = 422


class InputTooLong(Permanent):
    code = "INPUT_TOO_LONG"
    http_status = 422


class BodyTooLarge(Permanent):
    code = "BODY_TOO_LARGE"
    http_status = 413


class InvalidLoraId(Permanent):
    code = "INVALID_LORA_ID"
    http_status = 422


class ModelNotFound(Permanent):
    code = "MODEL_NOT_FOUND"
    http_status = 404


class AdapterNotFound(Permanent):
    code = "ADAPTER_NOT_FOUND"
    http_status = 404


class JobNotFound(Permanent):
    code = "JOB_NOT_FOUND"
    http_status = 404


class NotFound(Permanent):
    code = "NOT_FOUND"
    http_status = 404


class MethodNotAllowed(Permanent):
    code = "METHOD_NOT_ALLOWED"
    http_status = 405


class Unauthorized(Permanent):
    code = "UNAUTHORIZED"
    http_status = 401


class AdapterForbidden(Permanent):
    """This API key's adapter allowlist does not include the adapter."""

    code = "ADAPTER_FORBIDDEN"
    http_status = 403


class QuotaExceeded(Retryable):
    """A per-key quota (submit rate or queued items); retry after `Retry-After` seconds."""

    code = "QUOTA_EXCEEDED"
    http_status = 429

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class IdempotencyKeyReused(Permanent):
    """The same Idempotency-Key came with a different request body."""

    code = "IDEMPOTENCY_KEY_REUSED"
    http_status = 422


class JobNotCancellable(Permanent):
    code = "JOB_NOT_CANCELLABLE"
    http_status = 409


class JobTimeout(Retryable):
    """The sync endpoint stopped waiting; the job goes on and can be polled."""

    code = "JOB_TIMEOUT"
    http_status = 504

    def __init__(self, message: str, job_id: str) -> None:
        super().__init__(message)
        self.job_id = job_id

    def to_dict(self) -> dict[str, str]:
        return {**super().to_dict(), "job_id": self.job_id}


class QueueFull(Retryable):
    """Backpressure: the model's queue is at its limit; retry after `Retry-After` seconds."""

    code = "QUEUE_FULL"
    http_status = 429

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RedeliveryLimit(Permanent):
    """Workers died on this job again and again; it went to the dead-letter list."""

    code = "REDELIVERY_LIMIT"
    http_status = 500


class QueueUnavailable(Retryable):
    code = "QUEUE_UNAVAILABLE"
    http_status = 503


class WebhookUrlForbidden(Permanent):
    """The webhook URL is not http(s) or points at a non-public address (SSRF protection)."""

    code = "WEBHOOK_URL_FORBIDDEN"
    http_status = 422


class WebhooksDisabled(Permanent):
    code = "WEBHOOKS_DISABLED"
    http_status = 422


class EncodeFailed(Permanent):
    """The forward pass failed on this job's own items (the rest of its batch went on)."""

    code = "ENCODE_FAILED"
    http_status = 500


class AdapterSourceUnavailable(Retryable):
    """A remote adapter source (Hub, S3) could not be asked; the adapter may well exist."""

    code = "ADAPTER_SOURCE_UNAVAILABLE"
    http_status = 503


class WorkerError(Retryable):
    code = "WORKER_ERROR"
    http_status = 500


class AdapterInvalid(Permanent):
    """Base of every reason an adapter is refused; each reason has its own code."""

    code = "ADAPTER_INVALID"
    http_status = 422


class AdapterNotLora(AdapterInvalid):
    code = "ADAPTER_NOT_LORA"


class AdapterUnsafeFormat(AdapterInvalid):
    code = "ADAPTER_UNSAFE_FORMAT"


class AdapterTensorsMismatch(AdapterInvalid):
    code = "ADAPTER_TENSORS_MISMATCH"


class AdapterShapeMismatch(AdapterInvalid):
    code = "ADAPTER_SHAPE_MISMATCH"


class AdapterRankTooHigh(AdapterInvalid):
    code = "ADAPTER_RANK_TOO_HIGH"


class AdapterTargetMissing(AdapterInvalid):
    code = "ADAPTER_TARGET_MISSING"


class AdapterBaseMismatch(AdapterInvalid):
    code = "ADAPTER_BASE_MISMATCH"


class AdapterNonFinite(AdapterInvalid):
    code = "ADAPTER_NON_FINITE"


class AdapterTooLarge(AdapterInvalid):
    code = "ADAPTER_TOO_LARGE"


class AdapterUnsupported(AdapterInvalid):
    """A LoRA feature the engine does not run (DoRA, trained biases, modules_to_save, ...)."""

    code = "ADAPTER_UNSUPPORTED"


class AdapterConfigInvalid(AdapterInvalid):
    """`adapter_config.json` is not a well-formed LoRA config: not a JSON object, a field of the
    wrong type or out of range (`r` of 0, `lora_alpha` missing or a string, ...)."""

    code = "ADAPTER_CONFIG_INVALID"


class AdapterScaleTooLarge(AdapterInvalid):
    """`lora_alpha / r` (or `/ sqrt(r)`) is finite but far beyond any training recipe."""

    code = "ADAPTER_SCALE_TOO_LARGE"


class AdapterOutsideDir(AdapterInvalid):
    """The adapter's directory or one of its files links outside the adapter directory."""

    code = "ADAPTER_OUTSIDE_DIR"


class FileNotFound(Permanent):
    """Missing and not yours answer the same, so a file id never tells who else has files."""

    code = "FILE_NOT_FOUND"
    http_status = 404


class FileTooLarge(Permanent):
    code = "FILE_TOO_LARGE"
    http_status = 413


class InvalidFile(Permanent):
    """A file a batch cannot use at all (not UTF-8 JSON lines, too many lines, empty); a single
    bad line does not fail its batch, it goes to the error file."""

    code = "INVALID_FILE"
    http_status = 400


class TooManyFiles(Retryable):
    code = "TOO_MANY_FILES"
    http_status = 429


class BatchNotFound(Permanent):
    code = "BATCH_NOT_FOUND"
    http_status = 404


class BatchNotCancellable(Permanent):
    code = "BATCH_NOT_CANCELLABLE"
    http_status = 409


class TooManyBatches(Retryable):
    code = "TOO_MANY_BATCHES"
    http_status = 429


class BatchCancelled(Permanent):
    """A line its batch's cancel reached before it ran (in the batch's error file)."""

    code = "BATCH_CANCELLED"
    http_status = 409


class BatchExpired(Permanent):
    """A line not run within its batch's completion window (in the batch's error file)."""

    code = "BATCH_EXPIRED"
    http_status = 410


class TooManyAdapters(Retryable):
    code = "TOO_MANY_ADAPTERS"
    http_status = 429


class AdapterStorageFull(Retryable):
    """The tenant's adapters hold `adapters.max_bytes_per_tenant` bytes, with this upload."""

    code = "ADAPTER_STORAGE_FULL"
    http_status = 429


class TooManyPinned(Retryable):
    code = "TOO_MANY_PINNED"
    http_status = 429


class AdapterCheckUnavailable(Retryable):
    """This gateway lacks the base model's files, so it cannot check an upload against it."""

    code = "ADAPTER_CHECK_UNAVAILABLE"
    http_status = 503
