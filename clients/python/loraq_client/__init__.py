"""Python client for loraq: `LoraqClient` (blocking) and `AsyncLoraqClient` (asyncio), their
errors and job and batch handles, helpers for batch files (`batch_lines`, `read_batch_output`),
and `verify_webhook` for receivers of loraq's signed webhooks.

    from loraq_client import LoraqClient

    with LoraqClient("http://127.0.0.1:8080", api_key="...") as client:
        vectors = client.submit("sentence-transformers/all-MiniLM-L6-v2", ["hello"]).wait().vectors
"""

from loraq_client.batches import (
    BatchLineError,
    batch_lines,
    load_npy_output,
    load_parquet_output,
    read_batch_output,
)
from loraq_client.client import (
    APIConnectionError,
    AsyncBatch,
    AsyncJob,
    AsyncLoraqClient,
    AuthenticationError,
    Batch,
    EncodeResult,
    FileInput,
    HasText,
    InvalidRequestError,
    InvalidResponseError,
    Item,
    ItemLike,
    Job,
    JobFailedError,
    JobTimeoutError,
    LoraqClient,
    LoraqError,
    NotFoundError,
    Page,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    WebhookVerificationError,
    coerce_items,
    verify_webhook,
)

__all__ = [
    "APIConnectionError",
    "AsyncBatch",
    "AsyncJob",
    "AsyncLoraqClient",
    "AuthenticationError",
    "Batch",
    "BatchLineError",
    "EncodeResult",
    "FileInput",
    "HasText",
    "InvalidRequestError",
    "InvalidResponseError",
    "Item",
    "ItemLike",
    "Job",
    "JobFailedError",
    "JobTimeoutError",
    "LoraqClient",
    "LoraqError",
    "NotFoundError",
    "Page",
    "PermissionDeniedError",
    "RateLimitError",
    "ServerError",
    "WebhookVerificationError",
    "batch_lines",
    "coerce_items",
    "load_npy_output",
    "load_parquet_output",
    "read_batch_output",
    "verify_webhook",
]
