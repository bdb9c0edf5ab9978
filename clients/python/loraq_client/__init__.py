"""Python client for loraq: `LoraqClient` (blocking) and `AsyncLoraqClient` (asyncio), their
errors and job handles, and `verify_webhook` for receivers of loraq's signed webhooks.

    from loraq_client import LoraqClient

    with LoraqClient("http://127.0.0.1:8080", api_key="...") as client:
        vectors = client.submit("sentence-transformers/all-MiniLM-L6-v2", ["hello"]).wait().vectors
"""

from loraq_client.client import (
    APIConnectionError,
    AsyncJob,
    AsyncLoraqClient,
    AuthenticationError,
    EncodeResult,
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
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    WebhookVerificationError,
    coerce_items,
    verify_webhook,
)

__all__ = [
    "APIConnectionError",
    "AsyncJob",
    "AsyncLoraqClient",
    "AuthenticationError",
    "EncodeResult",
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
    "PermissionDeniedError",
    "RateLimitError",
    "ServerError",
    "WebhookVerificationError",
    "coerce_items",
    "verify_webhook",
]
