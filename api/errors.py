"""Every error leaves the gateway as `{"error": {"code", "message"}}` with its HTTP status.

The code also goes in `X-SIE-Error-Code`, which the SIE client reads. Nothing a client sends can
produce an unhandled 500: malformed bodies, unknown routes and validation failures all map to
their own codes here. A bug that does raise answers 500 `INTERNAL_ERROR` like any other error,
and the connection stays open for the client's next request.
"""

from __future__ import annotations

import logging

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

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


#: A location in a validation message is cut here: it can hold a key the client made up.
MAX_LOC_CHARS = 200


def describe_validation(errors: list[dict[str, object]], limit: int = 3) -> str:
    parts = []
    for err in errors[:limit]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")  # type: ignore[attr-defined]
        parts.append(f"{loc[:MAX_LOC_CHARS] or 'body'}: {err.get('msg')}")
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
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        cls = _BY_STATUS.get(exc.status_code, E.InvalidInput)
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = allowed_methods(request)
        return error_response(cls(str(exc.detail)), status=exc.status_code, headers=headers)

    @app.exception_handler(RedisError)
    async def _redis(_: Request, exc: RedisError) -> Response:
        log.warning("redis unavailable: %s", exc)
        error = E.QueueUnavailable("the job store is unavailable; retry shortly")
        return error_response(error, headers={"Retry-After": "1"})

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        """Only for what escapes `CatchUnhandled` (the middlewares outside it)."""
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return internal_error()

    app.add_middleware(CatchUnhandled)


_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def allowed_methods(request: Request) -> str:
    """`Allow` of a 405: every method some route takes at this path. Starlette names only the
    first route's, and a path served by several routes (GET and DELETE of a job) has more."""
    routes = request.app.router.routes
    return ", ".join(
        method
        for method in _METHODS
        if any(r.matches({**request.scope, "method": method})[0] is Match.FULL for r in routes)
    )


def internal_error() -> Response:
    return error_response(E.LoraqError("internal error"))


class CatchUnhandled:
    """Answers 500 `INTERNAL_ERROR` for an exception no handler took, and ends the request as
    any other. Starlette's outermost middleware answers too but then re-raises, so the server
    logs the error twice and closes the keep-alive connection under the client's feet."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            if started:  # half an answer is out: only closing the connection can end it
                raise
            log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            await internal_error()(scope, receive, send)


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
