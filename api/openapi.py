"""The gateway's OpenAPI document (`/openapi.json`), for the settings the gateway runs with.

Bodies are parsed by hand (`api.body`), so FastAPI sees none of them: a body route names its
model with `request_body(model)`, and the document gets that model's schema in
`components/schemas`, as a required JSON or msgpack body. The limits that are settings (items
per request, characters per text) are written in as this gateway enforces them, and so is the
bearer API key when keys are on. Every error answer is documented with its body, and answers
rendered by hand with response models (the job view here, the others beside their routes), so
the fuzz test (tests/e2e/test_fuzz_api.py) holds the gateway to them.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from api.models import ErrorBody, JobLinks
from common.schemas import JobStatus
from common.settings import AuthMode, Settings

REF = "#/components/schemas/{model}"
JSON = "application/json"
BODY_TYPES = (JSON, "application/msgpack")
SECURITY_SCHEME = "apiKey"

#: Models of the bodies routes parse by hand, by name: filled by `request_body` at import.
_BODIES: dict[str, type[BaseModel]] = {}

_ERRORS = {
    400: "`INVALID_JSON`: the body is neither valid JSON nor valid msgpack",
    401: "`UNAUTHORIZED`: no API key, or not a known one",
    403: "`ADAPTER_FORBIDDEN`: this API key may not use the adapter",
    404: "`MODEL_NOT_FOUND`, `ADAPTER_NOT_FOUND`, `JOB_NOT_FOUND`",
    409: "`JOB_NOT_CANCELLABLE`: the job has already finished",
    413: "`BODY_TOO_LARGE`: over the byte limit, or more values than the item limit allows",
    415: "`UNSUPPORTED_MEDIA_TYPE`: send application/json or application/msgpack",
    422: "`INVALID_INPUT`, `NO_ITEMS`, `TOO_MANY_ITEMS`, `INPUT_TOO_LONG`, `INVALID_LORA_ID`, "
    "`IDEMPOTENCY_KEY_REUSED`, `WEBHOOK_URL_FORBIDDEN`, `WEBHOOKS_DISABLED`, `ADAPTER_*`",
    429: "`QUOTA_EXCEEDED`, `QUEUE_FULL`: retry after `Retry-After` seconds",
    500: "`INTERNAL_ERROR`, and on the waiting routes the job's own `WORKER_ERROR`, "
    "`ENCODE_FAILED`, `REDELIVERY_LIMIT`",
    503: "`QUEUE_UNAVAILABLE` (the job store or queue is unreachable), "
    "`ADAPTER_SOURCE_UNAVAILABLE`: retry after `Retry-After` seconds",
    504: "`JOB_TIMEOUT`: the job goes on; poll `/v1/jobs/{job_id}` with the `job_id` given",
}
_RETRY_AFTER = {
    "Retry-After": {"description": "Seconds to wait before retrying", "schema": {"type": "integer"}}
}
#: What any operation can answer, and what any /v1 operation can.
_ANY = (500,)
_V1 = (401, 503)


def error_responses(
    *statuses: int, codes: Mapping[int, str] | None = None
) -> dict[int | str, dict[str, Any]]:
    """`responses` of a route: each status with its codes and the error body. `codes` names
    the codes of statuses where the route's differ from the job routes' (files, batches)."""
    return {
        status: {
            "model": ErrorBody,
            "description": (codes or {}).get(status) or _ERRORS[status],
            **({"headers": _RETRY_AFTER} if status in (429, 503) else {}),
        }
        for status in statuses
    }


def request_body(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` of a route that parses `model` from its body with `api.body`."""
    _BODIES[model.__name__] = model
    schema = {"$ref": REF.format(model=model.__name__)}
    content = {media_type: {"schema": schema} for media_type in BODY_TYPES}
    return {"requestBody": {"required": True, "content": content}}


class Timing(BaseModel):
    queue_ms: float | None = None
    inference_ms: float | None = None
    total_ms: float | None = None


class JobError(BaseModel):
    code: str
    message: str


class JobItem(BaseModel):
    id: str | None = None
    dense: list[float]


class JobResult(BaseModel):
    items: list[JobItem]


class WebhookView(BaseModel):
    url: str
    events: list[str]
    status: str
    attempts: int
    last_status_code: int | None = None
    last_error: str | None = None
    next_attempt_at: datetime | None = None


class JobView(BaseModel):
    """A job as `GET /v1/jobs/{job_id}` shows it; `result` once it has succeeded."""

    id: str
    status: JobStatus
    model: str
    lora_id: str | None = None
    adapter_hash: str | None = None
    n_items: int
    attempts: int = 0
    worker: str | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: JobError | None = None
    result: JobResult | None = None
    timing: Timing | None = None
    webhook: WebhookView | None = None
    links: JobLinks


def install_openapi(app: FastAPI, settings: Settings) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build(app, settings)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def build(app: FastAPI, settings: Settings) -> dict[str, Any]:
    doc = get_openapi(title=app.title, version=app.version, routes=app.routes)
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    add_schemas(schemas, [_BODIES[name] for name in sorted(_BODIES)])
    write_limits(schemas, settings)
    write_models(doc, settings)
    keys_on = settings.auth.mode is AuthMode.KEYS
    if keys_on:
        doc["components"]["securitySchemes"] = {
            SECURITY_SCHEME: {
                "type": "http",
                "scheme": "bearer",
                "description": "An API key (`lq_...`), as `loraq keys create` prints it",
            }
        }
    for path, operations in doc["paths"].items():
        v1 = path.startswith("/v1/")
        for operation in operations.values():
            statuses = _ANY + (_V1 if v1 else ())
            responses = operation.setdefault("responses", {})
            for status, response in error_responses(*statuses).items():
                if str(status) in responses or (status == 401 and not keys_on):
                    continue
                schema = {"$ref": REF.format(model=response.pop("model").__name__)}
                responses[str(status)] = {**response, "content": {JSON: {"schema": schema}}}
            if v1 and keys_on:
                operation["security"] = [{SECURITY_SCHEME: []}]
    return doc


def add_schemas(schemas: dict[str, Any], models: list[type[BaseModel]]) -> None:
    """The models' schemas (and those they refer to) into `components/schemas`."""
    _, top = models_json_schema([(m, "validation") for m in models], ref_template=REF)
    for name, schema in top.get("$defs", {}).items():
        if schemas.setdefault(name, schema) != schema:
            raise RuntimeError(f"two different schemas are both named {name!r}")


def write_limits(schemas: dict[str, Any], settings: Settings) -> None:
    """The per-request limits this gateway enforces, where the request models say less."""
    limits = settings.limits
    for name in ("JobRequest", "EncodeRequest"):
        schemas[name]["properties"]["items"]["maxItems"] = limits.max_items_per_job
    for variant in schemas["EmbeddingsRequest"]["properties"]["input"]["anyOf"]:
        if variant["type"] == "array":
            variant["maxItems"] = limits.max_items_per_job
            variant["items"]["maxLength"] = limits.max_text_chars
        else:
            variant["maxLength"] = limits.max_text_chars
    schemas["Item"]["properties"]["text"]["maxLength"] = limits.max_text_chars


def write_models(doc: dict[str, Any], settings: Settings) -> None:
    """The models this gateway serves (any other answers 404 `MODEL_NOT_FOUND`)."""
    models = sorted(settings.models)
    doc["components"]["schemas"]["JobRequest"]["properties"]["model"]["enum"] = models
    for parameter in doc["paths"]["/v1/encode/{model}"]["post"]["parameters"]:
        if parameter["name"] == "model":
            parameter["schema"]["enum"] = models
    embeddings = doc["components"]["schemas"]["EmbeddingsRequest"]["properties"]["model"]
    embeddings["description"] = "A served model, or `<model>:<lora_id>` for an adapter of it"
    embeddings["examples"] = models
