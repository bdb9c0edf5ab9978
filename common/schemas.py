"""The gateway<->worker contract: the queue message, the stored job, the job status and the
worker heartbeat. HTTP request and response models are the gateway's own (`api.models`)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from common import keys
from common.adapters import REVISION_CHARS
from common.errors import InvalidLoraId

# An adapter id is `name` or `org/name`, and a registry adapter's may pin a revision
# (`org/name@<hash>`); each part starts with a letter or digit, so `.`/`..` parts, absolute
# paths and backslashes can never reach the filesystem.
_LORA_PART = r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}"
_LORA_ID_RE = re.compile(rf"{_LORA_PART}(/{_LORA_PART})?(@[0-9a-f]{{{REVISION_CHARS}}})?")


def validate_lora_id(lora_id: str) -> str:
    if not _LORA_ID_RE.fullmatch(lora_id) or ".." in lora_id:
        raise InvalidLoraId(
            f"invalid lora_id {lora_id[:200]!r}: expected 'name', 'org/name' or "
            f"'org/name@<revision>' (names of letters, digits, '.', '_' and '-', each part "
            f"starting with a letter or digit; a revision of {REVISION_CHARS} hex digits)"
        )
    return lora_id


#: An adapter id, checked where it enters (an HTTP body, a queue message), so code behind those
#: boundaries (adapter paths, Hub repo ids, S3 keys) takes it as safe. Not a ValueError: the
#: check's own error passes through pydantic, so the caller answers `INVALID_LORA_ID`.
LoraId = Annotated[str, AfterValidator(validate_lora_id)]


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


class TokenIds(BaseModel):
    """An encode message's texts as token ids (`common.token_ids`)."""

    model_config = ConfigDict(extra="forbid")

    tokenizer: str
    lengths: list[int]
    ids: str


class EncodeMessage(BaseModel):
    """What a worker receives per job. Texts travel in the message, not the job record, so a
    job costs one write at submit; `v` lets old and new workers tell formats apart."""

    model_config = ConfigDict(extra="forbid")

    v: Literal[1] = 1
    job_id: str
    model: str
    lora_id: LoraId | None
    texts: list[str]
    normalize: bool | None
    truncate: bool
    enqueued_at: float
    #: Set when the gateway tokenized the texts; workers older than this field refuse it, so
    #: upgrade workers before gateways.
    token_ids: TokenIds | None = None
    #: A batch's chunk: queued at `keys.BULK_PRIORITY`, and batched after interactive rows.
    bulk: bool = False

    @property
    def priority(self) -> int:
        return keys.BULK_PRIORITY if self.bulk else 0


class StoredJob(BaseModel):
    """A job record as kept in the `loraq:job:{id}` hash (timestamps are epoch seconds)."""

    model_config = ConfigDict(extra="forbid")

    id: str
    status: JobStatus
    model: str
    lora_id: str | None = None
    n_items: int
    item_ids: list[str | None] | None = None
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    error_code: str | None = None
    error_message: str | None = None
    inference_ms: float | None = None
    adapter_hash: str | None = None
    dims: int | None = None
    attempts: int = 0
    worker: str | None = None  # the worker that last started it
    tenant: str | None = None  # the API key's tenant that owns it
    quota_items: int | None = None  # items reserved against the tenant's quota until terminal
    quota_job: str | None = None  # its tenant's QUEUED_JOBS field it counts in until terminal
    n_tokens: int | None = None  # tokens encoded (after truncation)
    webhook_url: str | None = None
    webhook_events: str | None = None  # space-separated statuses
    webhook_status: str | None = None  # pending | delivered | failed
    webhook_attempts: int | None = None
    webhook_last_status_code: int | None = None
    webhook_last_error: str | None = None
    webhook_next_attempt_at: float | None = None


def iso(ts: float | None) -> str | None:
    """RFC 3339 in UTC with a `Z`, as pydantic writes datetimes; None for a time no datetime
    can hold (a stored value from a receiver's absurd `Retry-After` must not break a view)."""
    if ts is None:
        return None
    try:
        return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")
    except (OverflowError, OSError, ValueError):
        return None


class WorkerInfo(BaseModel):
    """A worker's heartbeat record (`loraq:worker:{id}`); its TTL is its liveness."""

    model_config = ConfigDict(extra="forbid")

    id: str
    model: str
    queues: list[str]
    warm_adapters: list[str] = Field(default_factory=list)
    free_slots: int = 0
    backlog: int = 0
    #: When `backlog` was sampled, on the Redis server's clock (its TIME, read atomically with the
    #: queue lengths): one clock for every host, so the gateway can tell which of its placements
    #: and completions the backlog already reflects. 0: unknown (every placement counts on top).
    backlog_at: float = 0.0
    started_at: float
    seen_at: float
    adapter_loads: int = 0
    adapter_hits: int = 0
    adapter_misses: int = 0
    adapter_evictions: int = 0
    batches: int = 0
    rows: int = 0
    forward_cpu_s: float = 0.0
