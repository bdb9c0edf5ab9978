"""Every Prometheus metric of loraq, in one place, so the names the Grafana dashboard and the
Helm chart use are defined once.

Importing this module registers every metric in the process's registry, so each process
exports all of them; only those it updates move: the gateway's (on its HTTP port, `/metrics`)
submissions, queue depths and ages; encode workers' (on `worker.metrics_port`) job outcomes and
latencies, batches and the adapter cache; the webhook worker's (on `webhooks.metrics_port`)
delivery attempts.
Label values are bounded: models and queues are configured, statuses and error codes are a fixed
vocabulary; adapter ids never become labels.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)

JOBS_SUBMITTED = Counter("loraq_jobs_submitted", "Jobs accepted (202) by the gateway", ["model"])
JOBS_FINISHED = Counter(
    "loraq_jobs_finished",
    "Jobs that reached a terminal status; reason is the error code of failed jobs",
    ["model", "status", "reason"],
)
QUEUE_DEPTH = Gauge("loraq_queue_depth", "Messages waiting in a queue", ["queue"])
QUEUE_OLDEST_AGE = Gauge(
    "loraq_queue_oldest_age_seconds", "Age of the oldest message waiting in a queue", ["queue"]
)
JOB_QUEUE_WAIT = Histogram(
    "loraq_job_queue_wait_seconds", "Submit to start of work", ["model"], buckets=_LATENCY
)
JOB_INFERENCE = Histogram(
    "loraq_job_inference_seconds",
    "Forward-pass time of a job's batches",
    ["model"],
    buckets=_LATENCY,
)
JOB_TOTAL = Histogram(
    "loraq_job_total_seconds", "Submit to result stored", ["model"], buckets=_LATENCY
)
BATCH_ROWS = Histogram(
    "loraq_batch_rows", "Rows per forward pass", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
)
BATCH_FILL = Histogram(
    "loraq_batch_fill_ratio",
    "Padded tokens of a batch over its token budget",
    buckets=(0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0),
)
ADAPTER_HITS = Counter("loraq_adapter_cache_hits", "Adapter found in a device slot")
ADAPTER_MISSES = Counter("loraq_adapter_cache_misses", "Adapter not in a device slot")
ADAPTER_EVICTIONS = Counter("loraq_adapter_cache_evictions", "Adapters evicted from a slot")
ADAPTER_LOAD = Histogram(
    "loraq_adapter_load_seconds",
    "Disk to CPU tier: read, validate, hash (a CPU-tier hit loads nothing)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5),
)
REDELIVERIES = Counter("loraq_redeliveries", "Job deliveries after the first (a worker died)")
DEAD_LETTERS = Counter("loraq_dead_letters", "Jobs moved to the dead-letter list")
REPUBLISHED = Counter("loraq_republished", "Overdue jobs published again by the sweeper")
WEBHOOK_ATTEMPTS = Counter(
    "loraq_webhook_attempts", "Webhook delivery attempts by outcome", ["outcome"]
)
