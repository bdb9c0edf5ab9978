"""Every error leaves the gateway as `{"error": {"code", "message"}}` with its HTTP status.

The code also goes in `X-SIE-Error-Code`, which the SIE client reads. Nothing a client sends can
produce an unhandled 500: malformed bodies, unknown routes and validation failures all map to
their own codes here.
"""

from __future__ import annotations

import logging

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException

from common import errors as E

log = logging.getLogger(__name__)

_BY_STATUS: dict[int, type[E.LoraqError]] = {
    404: E.NotFound,
    405: E.MethodNotAllowed,
    413: E.BodyTooLarge,
    415: E.UnsupportedMediaType,
}


def error_response(
    error: E.LoraqError, status: int | None = None, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        orjson.dumps({"error": error.to_dict()}),
        status_code=status or error.http_status,
        media_type="application/json",
        headers={"X-SIE-Error-Code": error.code, **(headers or {})},
    )


def describe_validation(errors: list[dict[str, object]], limit: int = 3) -> str:
    parts = []
    for err in errors[:limit]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")  # type: ignore[attr-defined]
        parts.append(f"{loc or 'body'}: {err.get('msg')}")
    more = f" (+{len(errors) - limit} more)" if len(errors) > limit else ""
    return "; ".join(parts) + more


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(E.LoraqError)
    async def _loraq(_: Request, exc: E.LoraqError) -> Response:
        headers = None
        if isinstance(exc, E.Retryable) and exc.http_status in (429, 503):
            headers = {"Retry-After": str(getattr(exc, "retry_after", 1))}
        return error_response(exc, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> Response:
        return error_response(E.InvalidInput(describe_validation(list(exc.errors()))))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> Response:
        cls = _BY_STATUS.get(exc.status_code, E.InvalidInput)
        return error_response(cls(str(exc.detail)), status=exc.status_code)

    @app.exception_handler(RedisError)
    async def _redis(_: Request, exc: RedisError) -> Response:
        log.warning("redis unavailable: %s", exc)
        error = E.QueueUnavailable("the job store is unavailable; retry shortly")
        return error_response(error, headers={"Retry-After": "1"})

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(E.LoraqError("internal error"))


def error_for_code(code: str, message: str) -> E.LoraqError:
    """Rebuild the error a worker stored on a failed job, to answer with its status."""
    for cls in _all_subclasses(E.LoraqError):
        if cls.code == code and cls is not E.JobTimeout:
            return cls(message)
    return E.LoraqError(message)


def _all_subclasses(cls: type[E.LoraqError]) -> list[type[E.LoraqError]]:
    out = []
    for sub in cls.__subclasses__():
        out += [sub, *_all_subclasses(sub)]
    return out
