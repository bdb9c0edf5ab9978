"""The only place Redis key, channel and queue names are built.

| key / name                         | type    | TTL                 | written by            |
|------------------------------------|---------|---------------------|-----------------------|
| loraq:job:{<id>}                   | hash    | result_ttl_s        | common.job_store (CAS Lua) |
| loraq:job:{<id>}:result            | string  | result_ttl_s        | common.job_store (CAS Lua) |
| loraq:job:{<id>}:message           | string  | until terminal      | common.job_store           |
| loraq:job:{<id>}:hold              | string  | heartbeats, renewed | common.job_store (Lua)     |
| loraq:pending                      | zset    | members: until term.| common.job_store (Lua)     |
| loraq:sweep-lock                   | string  | one sweep interval  | worker.redelivery        |
| loraq:webhooks:outbox              | zset    | until delivered     | common.job_store, outbox   |
| loraq:webhooks:in-flight:{host}    | zset    | one attempt's lease | webhooks.outbox (Lua)   |
| loraq:quota:queued-items           | hash    | -                   | common.job_store (Lua)     |
| loraq:quota:queued-jobs            | hash    | -                   | common.job_store (Lua)     |
| loraq:quota:{tenant}:bucket        | hash    | refill time + 60 s  | api.auth (Lua)        |
| loraq:idem:{tenant}:{key sha256}   | string  | idempotency_ttl_s   | api.idempotency       |
| loraq:webhook-lease:{<id>}         | string  | one attempt's lease | webhooks.outbox (Lua)   |
| loraq:events:job-done              | channel | -                   | common.job_store (Lua)     |
| loraq:workers                      | zset    | members pruned      | worker heartbeat      |
| loraq:lease:{model}:{shard}        | string  | routing.lease_ttl_s | worker.shard_leases (Lua)   |
| loraq:dead-letter                  | list    | -                   | worker.runner         |
| loraq:worker:{worker_id}           | string  | 3 heartbeats        | worker heartbeat      |
| loraq:file:{<id>}                  | hash    | bulk.retention_s    | api.files             |
| loraq:tenant:{tenant}:files        | zset    | -                   | api.files             |
| loraq:files:expiring               | zset    | -                   | api.files             |
| loraq:batch:{<id>}                 | hash    | bulk.retention_s    | api.batches           |
| loraq:batch:{<id>}:chunks          | hash    | with the batch      | api.batch_runner      |
| loraq:batch:{<id>}:lease           | string  | bulk.lease_ttl_s    | api.batch_runner      |
| loraq:tenant:{tenant}:batches      | zset    | -                   | api.batches           |
| loraq:batches:open                 | zset    | members: until term.| api.batches           |
| loraq:tenant:{tenant}:open-batches | set     | members: until term.| api.batches           |
| loraq:adapter:{org}:<name>         | hash    | -                   | api.adapters          |
| loraq:adapter:{org}:<name>:revs    | hash    | with the adapter    | api.adapters          |
| loraq:adapters:{org}:index         | zset    | -                   | api.adapters          |
| loraq:adapters:{org}:pinned        | set     | -                   | api.adapters          |
| loraq:adapters:{org}:bytes         | string  | -                   | api.adapters          |
| loraq:tenant:{tenant}:adapters-shared | set  | -                   | api.adapters          |
| loraq:adapters:orgs                | set     | -                   | api.adapters          |
| loraq:adapters:pinned              | hash    | -                   | api.adapters          |
| loraq:adapters:deleted             | zset    | adapters.delete_grace_s | api.adapters      |
| loraq:celery:{queue}               | list    | -                   | kombu (Celery broker) |
| loraq:celery:unacked(_index/mutex) | hash... | -                   | kombu (Celery broker) |

A job's two keys share the hash tag `{<id>}` (literal braces) so that one Lua script may touch
both on Redis Cluster. Job hash fields are the fields of `common.schemas.StoredJob`.
Celery's broker keys get their `loraq:celery:` prefix from kombu's `global_keyprefix`, so
`KOMBU_PREFIX + queue` is the list a queue lives in.
"""

from __future__ import annotations

import re

PREFIX = "loraq:"
KOMBU_PREFIX = PREFIX + "celery:"
JOB_DONE_CHANNEL = PREFIX + "events:job-done"
WORKERS_ZSET = PREFIX + "workers"
DEAD_LETTER = PREFIX + "dead-letter"
PENDING_ZSET = PREFIX + "pending"
WEBHOOK_OUTBOX = PREFIX + "webhooks:outbox"
QUEUED_ITEMS = PREFIX + "quota:queued-items"
#: Unfinished jobs per tenant and model (fields: `tenant_model_field`), for the tenant share.
QUEUED_JOBS = PREFIX + "quota:queued-jobs"
WEBHOOK_QUEUE = "webhooks"
TASK_WEBHOOK = "loraq.webhook"
SWEEP_LOCK = PREFIX + "sweep-lock"
#: Every tenant's files scored by their retention's end: what gateways sweep, so the bytes of
#: a tenant that never comes back are deleted too.
EXPIRING_FILES = PREFIX + "files:expiring"
#: Batches not yet terminal (scored by creation time): what gateways drive.
OPEN_BATCHES = PREFIX + "batches:open"
#: Registry adapters pinned to workers' slots: `org/name` -> JSON {revision, model}.
PINNED_ADAPTERS = PREFIX + "adapters:pinned"
#: Orgs that ever held a registry adapter: what operators' keys list.
ADAPTER_ORGS = PREFIX + "adapters:orgs"
#: Deleted registry revisions (`org/name@hash`) scored by deletion time: workers drop them,
#: and gateways delete their files once `adapters.delete_grace_s` has passed.
DELETED_ADAPTERS = PREFIX + "adapters:deleted"
TASK_ENCODE = "loraq.encode"
#: Load an adapter into a worker's CPU tier ahead of its jobs (a batch's adapters).
TASK_PREFETCH = "loraq.prefetch"

#: The kombu priority of batch chunk jobs (one of kombu's steps 0, 3, 6, 9; 9 is the lowest).
BULK_PRIORITY = 9
#: kombu's separator between a queue's name and a priority (`Channel.sep`).
_KOMBU_PRIORITY_SEP = "\x06\x16"

_SLUG_RE = re.compile(r"[^a-z0-9]+")


def job(job_id: str) -> str:
    return f"{PREFIX}job:{{{job_id}}}"


def job_result(job_id: str) -> str:
    return f"{PREFIX}job:{{{job_id}}}:result"


def job_message(job_id: str) -> str:
    """A copy of the job's queue message, kept until the job is terminal, for redelivery."""
    return f"{PREFIX}job:{{{job_id}}}:message"


def job_hold(job_id: str) -> str:
    """The id of the worker working on a running job. Its TTL is a few heartbeats, renewed by
    that worker's heartbeat while it works on the job, so it lapses when the worker dies or
    drops the job; while it exists, a redelivery of the job is a duplicate (common.job_store)."""
    return f"{PREFIX}job:{{{job_id}}}:hold"


def webhook_lease(job_id: str) -> str:
    """The token of the one delivery attempt in flight for the job; its TTL outlives the
    attempt's deadline."""
    return f"{PREFIX}webhook-lease:{{{job_id}}}"


def webhook_in_flight(host: str) -> str:
    """Delivery attempts in flight to one receiver host (tokens scored by lease expiry), so no
    receiver takes more than its share of the delivery threads."""
    return f"{PREFIX}webhooks:in-flight:{host}"


def rate_bucket(tenant: str) -> str:
    return f"{PREFIX}quota:{tenant}:bucket"


def tenant_model_field(tenant: str, model_id: str) -> str:
    """A tenant's field in `QUEUED_JOBS`; tenant names cannot contain '/'."""
    return f"{tenant}/{model_slug(model_id)}"


def idempotency(tenant: str, key_digest: str) -> str:
    return f"{PREFIX}idem:{tenant}:{key_digest}"


def worker(worker_id: str) -> str:
    return f"{PREFIX}worker:{worker_id}"


def model_slug(model_id: str) -> str:
    return _SLUG_RE.sub("-", model_id.lower()).strip("-")


def model_queue(model_id: str) -> str:
    """The queue every worker of a model consumes; it outlives any one worker."""
    return f"jobs.{model_slug(model_id)}"


def shard_queue(model_id: str, shard: int) -> str:
    """One of a model's shard queues: workers lease them (`lease`) and the router targets the
    shards of the worker it picks; when a worker dies its leases expire and others take over."""
    return f"{model_queue(model_id)}.{shard}"


def lease(model_id: str, shard: int) -> str:
    """Who consumes a shard queue: the worker id, with a TTL the holder keeps renewing."""
    return f"{PREFIX}lease:{model_slug(model_id)}:{shard}"


def queue_list(queue: str, priority: int = 0) -> str:
    """The Redis list kombu keeps a queue's messages of one priority in. Consumers pop every
    queue's priority-0 list before any other (kombu's Redis transport: 0 is the highest), so
    batch chunks (`BULK_PRIORITY`) wait while interactive jobs are queued."""
    return KOMBU_PREFIX + queue + (f"{_KOMBU_PRIORITY_SEP}{priority}" if priority else "")


def file(file_id: str) -> str:
    return f"{PREFIX}file:{{{file_id}}}"


def tenant_files(tenant: str) -> str:
    """A tenant's file ids scored by creation time: listing, paging and the per-tenant cap."""
    return f"{PREFIX}tenant:{tenant}:files"


def batch(batch_id: str) -> str:
    return f"{PREFIX}batch:{{{batch_id}}}"


def batch_chunks(batch_id: str) -> str:
    """Chunk index -> its job id, then `done` once its output part is written: what a gateway
    taking over a batch resumes from, so no line is answered twice."""
    return f"{PREFIX}batch:{{{batch_id}}}:chunks"


def batch_lease(batch_id: str) -> str:
    """The gateway driving the batch; its TTL lapses if that gateway dies, and another takes it."""
    return f"{PREFIX}batch:{{{batch_id}}}:lease"


def tenant_batches(tenant: str) -> str:
    return f"{PREFIX}tenant:{tenant}:batches"


def tenant_open_batches(tenant: str) -> str:
    """A tenant's batches not yet terminal: its cap on open batches."""
    return f"{PREFIX}tenant:{tenant}:open-batches"


def adapter(name: str) -> str:
    """A registry adapter's record (`org/name`); every key of an org's adapters shares the hash
    tag `{org}`, so one Lua script may keep the record and the org's counts together."""
    org, _, rest = name.partition("/")
    return f"{PREFIX}adapter:{{{org}}}:{rest}"


def adapter_revisions(name: str) -> str:
    """Revision hash -> its description (JSON)."""
    return adapter(name) + ":revs"


def org_adapters(org: str) -> str:
    """An org's adapter names scored by creation time: listing and the per-tenant cap."""
    return f"{PREFIX}adapters:{{{org}}}:index"


def org_pinned(org: str) -> str:
    return f"{PREFIX}adapters:{{{org}}}:pinned"


def org_adapter_bytes(org: str) -> str:
    """Bytes of all the org's revisions, for its byte cap."""
    return f"{PREFIX}adapters:{{{org}}}:bytes"


def shared_adapters(tenant: str) -> str:
    """Names of other tenants' adapters shared with this tenant."""
    return f"{PREFIX}tenant:{tenant}:adapters-shared"
