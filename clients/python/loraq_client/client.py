"""Python client for loraq: sync `LoraqClient` and async `AsyncLoraqClient`.

Both clients share one sans-I/O core: every operation is a generator ("flow") that yields the
HTTP calls it needs and receives their responses, so request building, retries, long-poll loops
and response parsing exist once; each client only supplies a driver that performs a call with
its own httpx client and sleeps with its own sleep.

The Files and Batches API (OpenAI's, for bulk embedding) runs on the same core: an upload streams
from its file object and a download streams into its file, so neither holds a large file in
memory; `Batch` handles wrap batches as `Job` handles wrap jobs.

`encode` speaks SIE's wire format (msgpack, `dense` as a float32 numpy array), so code written
for the SIE client (`[r["dense"] for r in client.encode(model, items, options={...})]`) runs
unchanged against loraq with only the import changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import re
import time
import uuid
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Generic, Protocol, Self, TypeAlias, TypedDict, TypeVar
from urllib.parse import quote

import httpx
import msgpack
import msgpack_numpy
import numpy as np
import numpy.typing as npt
from standardwebhooks.webhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError as _StandardWebhooksError

from loraq_client import _json
from loraq_client.adapters import adapter_parts, adapter_route

USER_AGENT = "loraq-client/0.1"
DEFAULT_TIMEOUT_S = 30.0
#: With the backoff below, 8 retries span about 30 s: a 503 for a Redis failover (Sentinel
#: promotes a replica in seconds; a primary's replica may take longer to resync) is ridden out.
DEFAULT_MAX_RETRIES = 8
#: The gateway holds a long poll at most this long (`GET /v1/jobs/{id}?wait=`).
MAX_WAIT_S = 60.0
#: The gateway's default `LORAQ_SYNC_TIMEOUT_S`: a sync encode may be held this long before its
#: answer, so the read timeout of that call is stretched by it.
SYNC_HOLD_S = 60.0
_BACKOFF_BASE_S = 0.5
_BACKOFF_MAX_S = 8.0
#: Statuses the gateway answers before doing any work (queue full, quota, Redis down), with
#: Retry-After: resending the same request later is what they ask for.
_RETRY_STATUSES = frozenset({429, 503})
_TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
_BATCH_TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
#: `Batch.wait` polls after this long, then doubles the interval up to its `poll_s`: a small
#: batch is seen done within seconds, a long one costs a request every `poll_s`. Batches have no
#: long poll, as in OpenAI's API.
_FIRST_POLL_S = 1.0
DEFAULT_POLL_S = 10.0
#: The filename an upload of bytes or of a nameless stream is given.
_UNNAMED = "input.jsonl"
#: What a gateway-given id may put in a local filename.
_UNSAFE_IN_NAME = re.compile(r"[^\w.-]")
_MSGPACK = "application/msgpack"
_JSON = "application/json"


# -- Errors --------------------------------------------------------------------------------------


class LoraqError(Exception):
    """Every failure the client reports; `code` is the gateway's stable error code (or one of
    the client's own: CONNECTION_ERROR, INVALID_RESPONSE, JOB_CANCELLED, WEBHOOK_INVALID) and
    `status` the HTTP status, None when no HTTP answer is behind it."""

    def __init__(
        self, code: str, status: int | None, message: str, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.message = message
        #: Seconds the gateway asked to wait before retrying (429/503), if it said.
        self.retry_after = retry_after

    def __str__(self) -> str:
        where = f" (HTTP {self.status})" if self.status is not None else ""
        return f"{self.code}{where}: {self.message}"


class AuthenticationError(LoraqError):
    """401: no API key, or not one the gateway knows."""


class PermissionDeniedError(LoraqError):
    """403: the API key may not use this adapter (its allowlist)."""


class NotFoundError(LoraqError):
    """404: unknown model, adapter or job, including another tenant's job."""


class InvalidRequestError(LoraqError):
    """Any other 4xx: the same request fails the same way again."""


class RateLimitError(LoraqError):
    """429 after the retries ran out: the queue is full or a per-key quota is used up."""


class ServerError(LoraqError):
    """5xx (503 after the retries ran out)."""


class APIConnectionError(LoraqError):
    """No HTTP answer: the gateway could not be reached, or the connection broke."""

    def __init__(self, message: str) -> None:
        super().__init__("CONNECTION_ERROR", None, message)


class InvalidResponseError(LoraqError):
    """The gateway answered something this client cannot read (e.g. a proxy's page)."""

    def __init__(self, status: int | None, message: str) -> None:
        super().__init__("INVALID_RESPONSE", status, message)


class JobFailedError(LoraqError):
    """The job ended `failed` (`code` is the job's error code, e.g. ADAPTER_NOT_FOUND) or
    `cancelled` (code JOB_CANCELLED); `view` is the job as the gateway last showed it."""

    def __init__(self, code: str, message: str, job_id: str, view: Mapping[str, Any]) -> None:
        super().__init__(code, None, message)
        self.job_id = job_id
        self.view = dict(view)


class JobTimeoutError(LoraqError):
    """The job did not finish in time: a sync encode the gateway stopped waiting for (HTTP
    504), or `Job.wait(timeout)` running out. The job goes on; `job_id` can be waited on."""

    def __init__(self, message: str, job_id: str | None, status: int | None = None) -> None:
        super().__init__("JOB_TIMEOUT", status, message)
        self.job_id = job_id


class WebhookVerificationError(LoraqError):
    """A webhook whose signature, timestamp or body does not check out: do not trust it."""

    def __init__(self, message: str) -> None:
        super().__init__("WEBHOOK_INVALID", None, message)


_BY_STATUS: dict[int, type[LoraqError]] = {
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    429: RateLimitError,
}


def _retry_after(response: httpx.Response) -> float | None:
    try:
        seconds = float(response.headers.get("retry-after", ""))
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _error_from_response(response: httpx.Response) -> LoraqError:
    """The typed error for an error answer; the body's code wins over the header's, and a body
    that is not loraq's (a proxy's HTML page) still gives an error with its status."""
    status = response.status_code
    try:
        body = _json.loads(response.content)
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    error = error if isinstance(error, dict) else {}
    code = str(error.get("code") or response.headers.get("x-sie-error-code") or f"HTTP_{status}")
    message = str(error.get("message") or response.text[:500] or response.reason_phrase)
    if code == "JOB_TIMEOUT":
        job_id = error.get("job_id")
        return JobTimeoutError(message, str(job_id) if job_id else None, status)
    cls = _BY_STATUS.get(status) or (ServerError if status >= 500 else InvalidRequestError)
    return cls(code, status, message, _retry_after(response))


# -- Items and results ---------------------------------------------------------------------------


class Item(TypedDict, total=False):
    """SIE's `Item`, for code moving off sie-sdk: `Item(text=d)` works after changing only the
    import line. Any mapping with "text", object with `.text`, or plain string is accepted too."""

    id: str
    text: str


class EncodeResult(TypedDict, total=False):
    """One encoded item, as the SIE client returns it: `id` only when the item had one."""

    id: str
    dense: npt.NDArray[np.float32]


class HasText(Protocol):
    """Any item object with a `text` (and optionally an `id`) attribute, e.g. a dataclass."""

    @property
    def text(self) -> str: ...


ItemLike: TypeAlias = str | Mapping[str, object] | HasText


def coerce_items(items: Iterable[ItemLike]) -> list[dict[str, str]]:
    """Items as the wire wants them. SIE's `Item` is a TypedDict in some versions and a
    dataclass in others, so mappings and objects with attributes are both read."""
    if isinstance(items, str | bytes | Mapping):
        raise TypeError("items must be a list of items, not a single item")
    out = []
    for i, item in enumerate(items):
        text: object
        item_id: object
        if isinstance(item, str):
            text, item_id = item, None
        elif isinstance(item, Mapping):
            text, item_id = item.get("text"), item.get("id")
        else:
            text, item_id = getattr(item, "text", None), getattr(item, "id", None)
        if not isinstance(text, str):
            raise TypeError(f"item {i} has no text: {item!r:.200}")
        out.append({"text": text} if item_id is None else {"id": str(item_id), "text": text})
    return out


def _encode_results(response: httpx.Response, n_items: int) -> list[EncodeResult]:
    try:
        body = msgpack.unpackb(response.content, object_hook=msgpack_numpy.decode, raw=False)
        results = []
        for item in body["items"]:
            result = EncodeResult(dense=np.asarray(item["dense"]["values"], dtype=np.float32))
            if item.get("id") is not None:
                result["id"] = item["id"]
            results.append(result)
    except (ValueError, KeyError, TypeError, msgpack.UnpackException) as exc:
        raise InvalidResponseError(
            response.status_code, f"unreadable encode answer: {exc!r}"
        ) from exc
    if len(results) != n_items:
        raise InvalidResponseError(
            response.status_code, f"{len(results)} results for {n_items} items"
        )
    return results


def _json_object(response: httpx.Response, what: str) -> dict[str, Any]:
    try:
        body = _json.loads(response.content)
    except ValueError as exc:
        raise InvalidResponseError(response.status_code, f"unreadable {what}: {exc}") from exc
    if not isinstance(body, dict):
        raise InvalidResponseError(response.status_code, f"the answer is not a {what}")
    return body


def _resource(response: httpx.Response, what: str) -> dict[str, Any]:
    """A job, file or batch: a JSON object with a string `id`."""
    body = _json_object(response, what)
    if not isinstance(body.get("id"), str):
        raise InvalidResponseError(response.status_code, f"the answer is not a {what}")
    return body


def _job_view(response: httpx.Response) -> dict[str, Any]:
    return _resource(response, "job")


_T = TypeVar("_T")
_U = TypeVar("_U")


@dataclass(frozen=True)
class Page(Generic[_T]):
    """One page of a list (`files()`, `batches()`), as OpenAI's list objects have it."""

    data: list[_T]
    has_more: bool
    first_id: str | None
    last_id: str | None

    @property
    def next_after(self) -> str | None:
        """The `after` of the next page; None on the last one. An empty page ends the list
        even if it claims more, so a confused server cannot keep an iterator looping."""
        return self.last_id if self.has_more and self.data else None

    def map(self, wrap: Callable[[_T], _U]) -> Page[_U]:
        return Page([wrap(item) for item in self.data], self.has_more, self.first_id, self.last_id)


def _page(response: httpx.Response, what: str) -> Page[dict[str, Any]]:
    body = _json_object(response, f"list of {what}s")
    data = body.get("data")
    if not isinstance(data, list) or not all(
        isinstance(item, dict) and isinstance(item.get("id"), str) for item in data
    ):
        raise InvalidResponseError(response.status_code, f"the answer is not a list of {what}s")
    first_id = body.get("first_id") or (data[0]["id"] if data else None)
    last_id = body.get("last_id") or (data[-1]["id"] if data else None)
    return Page(data, bool(body.get("has_more")), first_id, last_id)


def _pages(fetch: Callable[[str | None], Page[_T]]) -> Iterator[_T]:
    """Every item of a list, one page (`fetch(after)`) at a time."""
    after: str | None = None
    while True:
        page = fetch(after)
        yield from page.data
        after = page.next_after
        if after is None:
            return


async def _apages(fetch: Callable[[str | None], Awaitable[Page[_T]]]) -> AsyncIterator[_T]:
    """As `_pages`, awaited."""
    after: str | None = None
    while True:
        page = await fetch(after)
        for item in page.data:
            yield item
        after = page.next_after
        if after is None:
            return


# -- The sans-I/O core ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Call:
    """One HTTP exchange a flow asks its driver for."""

    method: str
    path: str
    content: bytes | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    params: Mapping[str, str] | None = None
    #: How long the gateway may legitimately hold this request (long poll, sync encode).
    hold_s: float = 0.0
    #: Whether a request that may already have reached the gateway can be sent again harmlessly.
    idempotent: bool = True
    #: The driver sleeps this long before sending (retry backoff, Retry-After, poll interval).
    delay_s: float = 0.0
    #: A multipart form (`files` streamed from their file objects by httpx).
    data: Mapping[str, str] | None = None
    files: Sequence[tuple[str, tuple[str, bytes | IO[bytes]]]] | None = None
    #: False for a body streamed from a file object that cannot seek back to its start: once
    #: the gateway answered, some of it was read and it cannot be sent again.
    replayable: bool = True
    #: A successful answer's body is streamed into this file (through `<name>.part`) instead of
    #: being read into memory; the flow then gets the response without its content.
    download_to: Path | None = None


#: A flow yields calls and is sent each call's response (or thrown its transport error).
_Flow: TypeAlias = Generator[_Call, httpx.Response, _T]


@dataclass(frozen=True)
class _Done(Generic[_T]):
    value: _T


def _advance(
    flow: _Flow[_T], outcome: httpx.Response | httpx.RequestError | None
) -> _Call | _Done[_T]:
    """Feed a flow the outcome of its last call; its next call, or its result."""
    try:
        if outcome is None:
            return next(flow)
        if isinstance(outcome, httpx.Response):
            return flow.send(outcome)
        return flow.throw(outcome)
    except StopIteration as stop:
        return _Done(stop.value)


def _never_sent(exc: httpx.RequestError) -> bool:
    return isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)


#: What `upload_file` takes: a path, the bytes, or a binary file object (streamed, not read in).
FileInput: TypeAlias = str | os.PathLike[str] | bytes | IO[bytes]


def _replayable(body: bytes | IO[bytes]) -> bool:
    """httpx seeks a file object back to 0 before each send; a pipe cannot be."""
    if isinstance(body, bytes):
        return True
    try:
        return body.seekable()
    except (OSError, ValueError):
        return False


def _stream_name(stream: IO[bytes]) -> str:
    name = getattr(stream, "name", None)  # an int for os.fdopen and TemporaryFile
    if isinstance(name, str) and name and not name.startswith("<"):  # "<stdin>"
        return Path(name).name
    return _UNNAMED


@contextlib.contextmanager
def _partial_file(path: Path) -> Iterator[IO[bytes]]:
    """Writes go to `<path>.part`, renamed to `path` once complete: a broken or retried download
    never leaves a truncated file under the name a reader looks for."""
    part = path.with_name(path.name + ".part")
    try:
        with part.open("wb") as out:
            yield out
        part.replace(path)
    except BaseException:
        part.unlink(missing_ok=True)
        raise


class _Core:
    """Configuration and every flow; the two clients add only their drivers."""

    def __init__(
        self, base_url: str, api_key: str | None, timeout: float, max_retries: int
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.max_retries = max_retries
        self._headers = {"user-agent": USER_AGENT}
        if api_key:
            self._headers["authorization"] = f"Bearer {api_key}"

    def _request_args(self, call: _Call) -> dict[str, Any]:
        return {
            "method": call.method,
            "url": self.base_url + call.path,
            "content": call.content,
            "data": call.data,
            "files": call.files,
            "params": call.params,
            "headers": {**self._headers, **call.headers},
            "timeout": httpx.Timeout(self.timeout, read=self.timeout + call.hold_s),
        }

    def _backoff(self, attempt: int) -> float:
        cap: float = min(_BACKOFF_MAX_S, _BACKOFF_BASE_S * 2.0**attempt)
        return cap * random.uniform(0.5, 1.0)

    def _retry_delay(self, response: httpx.Response, attempt: int) -> float:
        """A 429's Retry-After is the gateway's knowledge (a quota's refill); a 503's is only
        a floor: the gateway cannot know when Redis is back, so the backoff grows past it."""
        wait = _retry_after(response)
        if wait is None:
            return self._backoff(attempt)
        return max(wait, self._backoff(attempt)) if response.status_code == 503 else wait

    def _exchange(self, call: _Call) -> _Flow[httpx.Response]:
        """One call with retries: 429/503 after Retry-After (else backoff); transport errors
        after backoff when the request cannot have reached the gateway, or may be resent."""
        attempt = 0
        while True:
            last = attempt >= self.max_retries
            try:
                response = yield call
            except httpx.RequestError as exc:
                if last or not (_never_sent(exc) or call.idempotent):
                    where = f"{call.method} {self.base_url}{call.path}"
                    raise APIConnectionError(f"{where}: {exc!r}") from exc
                call = replace(call, delay_s=self._backoff(attempt))
            else:
                if response.status_code not in _RETRY_STATUSES or last or not call.replayable:
                    if response.is_error:
                        raise _error_from_response(response)
                    return response
                call = replace(call, delay_s=self._retry_delay(response, attempt))
            attempt += 1

    def _encode_flow(
        self, model: str, items: Iterable[ItemLike], options: Mapping[str, object] | None
    ) -> _Flow[list[EncodeResult]]:
        payload = coerce_items(items)
        body: dict[str, Any] = {"items": payload}
        if options:
            body["params"] = {"options": dict(options)}
        call = _Call(
            "POST",
            f"/v1/encode/{quote(model, safe='/')}",
            content=msgpack.packb(body, use_bin_type=True),
            headers={"content-type": _MSGPACK, "accept": _MSGPACK},
            hold_s=SYNC_HOLD_S,
            # Resending after a read timeout would queue the same work twice while the
            # gateway is busiest; only requests that never left are resent.
            idempotent=False,
        )
        response = yield from self._exchange(call)
        return _encode_results(response, len(payload))

    def _submit_flow(
        self,
        model: str,
        items: Iterable[ItemLike],
        options: Mapping[str, object] | None,
        webhook: str | Mapping[str, object] | None,
        idempotency_key: str | None,
    ) -> _Flow[dict[str, Any]]:
        body: dict[str, Any] = {
            "model": model,
            "items": coerce_items(items),
            "params": {"options": dict(options or {})},
        }
        if webhook is not None:
            body["webhook"] = {"url": webhook} if isinstance(webhook, str) else dict(webhook)
        # The key makes the POST safe to resend: a retry gets the job the first try created.
        key = idempotency_key or uuid.uuid4().hex
        headers = {"content-type": _JSON, "idempotency-key": key}
        call = _Call("POST", "/v1/jobs", content=_json.dumps(body), headers=headers)
        return _job_view((yield from self._exchange(call)))

    def _get_flow(self, job_id: str, hold_s: float = 0.0) -> _Flow[dict[str, Any]]:
        params = {"wait": f"{hold_s:.3f}"} if hold_s > 0 else None
        call = _Call("GET", f"/v1/jobs/{quote(job_id, safe='')}", params=params, hold_s=hold_s)
        return _job_view((yield from self._exchange(call)))

    def _wait_flow(self, view: dict[str, Any], timeout: float | None) -> _Flow[dict[str, Any]]:
        """Long polls until the job is terminal; each poll is held by the gateway, so waiting
        costs one request a minute rather than a busy loop."""
        job_id = view["id"]
        deadline = None if timeout is None else time.monotonic() + timeout
        while view["status"] not in _TERMINAL:
            left = MAX_WAIT_S if deadline is None else deadline - time.monotonic()
            view = yield from self._get_flow(job_id, min(MAX_WAIT_S, max(0.0, left)))
            late = deadline is not None and time.monotonic() >= deadline
            if late and view["status"] not in _TERMINAL:
                raise JobTimeoutError(
                    f"job {job_id} is still {view['status']} after {timeout}s", job_id
                )
        return view

    def _cancel_flow(self, job_id: str) -> _Flow[dict[str, Any]]:
        # Not resent after a lost answer: a second DELETE of a job the first one cancelled
        # would turn that success into 409 JOB_NOT_CANCELLABLE.
        call = _Call("DELETE", f"/v1/jobs/{quote(job_id, safe='')}", idempotent=False)
        return _job_view((yield from self._exchange(call)))

    # -- Files and batches -----------------------------------------------------------------------

    def _upload_flow(
        self, file: FileInput, purpose: str, filename: str | None
    ) -> _Flow[dict[str, Any]]:
        with contextlib.ExitStack() as opened:
            body: bytes | IO[bytes]
            if isinstance(file, bytes):
                body, name = file, _UNNAMED
            elif isinstance(file, str | os.PathLike):
                path = Path(file)
                body, name = opened.enter_context(path.open("rb")), path.name
            else:
                body, name = file, _stream_name(file)
            call = _Call(
                "POST",
                "/v1/files",
                data={"purpose": purpose},
                files=[("file", (filename or name, body))],
                # Resent after a lost answer, a large upload would be stored (and sent) twice.
                idempotent=False,
                replayable=_replayable(body),
            )
            return _resource((yield from self._exchange(call)), "file")

    def _file_flow(self, file_id: str) -> _Flow[dict[str, Any]]:
        call = _Call("GET", f"/v1/files/{quote(file_id, safe='')}")
        return _resource((yield from self._exchange(call)), "file")

    def _files_flow(
        self, purpose: str | None, limit: int | None, after: str | None, order: str | None
    ) -> _Flow[Page[dict[str, Any]]]:
        query = {"purpose": purpose, "limit": limit, "after": after, "order": order}
        params = {key: str(value) for key, value in query.items() if value is not None}
        return _page((yield from self._exchange(_Call("GET", "/v1/files", params=params))), "file")

    def _file_content_flow(self, file_id: str) -> _Flow[bytes]:
        call = _Call("GET", f"/v1/files/{quote(file_id, safe='')}/content")
        return (yield from self._exchange(call)).content

    def _download_file_flow(self, file_id: str, dest: Path) -> _Flow[Path]:
        path = f"/v1/files/{quote(file_id, safe='')}/content"
        yield from self._exchange(_Call("GET", path, download_to=dest))
        return dest

    def _delete_file_flow(self, file_id: str) -> _Flow[dict[str, Any]]:
        # Not resent after a lost answer: the second DELETE would find no file (404).
        call = _Call("DELETE", f"/v1/files/{quote(file_id, safe='')}", idempotent=False)
        return _resource((yield from self._exchange(call)), "deleted file")

    # -- Adapters ----------------------------------------------------------------------------

    def _push_adapter_flow(
        self, source: Path, name: str, model: str | None
    ) -> _Flow[dict[str, Any]]:
        with contextlib.ExitStack() as opened:
            files: list[tuple[str, tuple[str, bytes | IO[bytes]]]] = [
                ("file", (filename, opened.enter_context(path.open("rb"))))
                for filename, path in adapter_parts(source)
            ]
            data = {"name": name, **({"model": model} if model else {})}
            # Resent after a lost answer, the same files make the same revision: harmless.
            call = _Call("POST", "/v1/adapters", data=data, files=files)
            return _resource((yield from self._exchange(call)), "adapter")

    def _adapter_flow(
        self, name: str, method: str = "GET", action: str = "", body: Any = None
    ) -> _Flow[dict[str, Any]]:
        content = None if body is None else _json.dumps(body)
        headers = {"content-type": _JSON} if body is not None else {}
        # A lost answer to a DELETE is not resent: the second would find nothing (404).
        call = _Call(
            method, adapter_route(name, action), content, headers, idempotent=method != "DELETE"
        )
        return _resource((yield from self._exchange(call)), "adapter")

    def _adapters_flow(self, limit: int | None, after: str | None) -> _Flow[Page[dict[str, Any]]]:
        query = {"limit": limit, "after": after}
        params = {key: str(value) for key, value in query.items() if value is not None}
        call = _Call("GET", "/v1/adapters", params=params)
        return _page((yield from self._exchange(call)), "adapter")

    def _create_batch_flow(
        self,
        input_file_id: str,
        output_format: str,
        metadata: Mapping[str, str] | None,
        webhook: str | Mapping[str, object] | None,
    ) -> _Flow[dict[str, Any]]:
        body: dict[str, Any] = {
            "input_file_id": input_file_id,
            "endpoint": "/v1/embeddings",
            "completion_window": "24h",
        }
        if metadata is not None:
            body["metadata"] = dict(metadata)
        if output_format != "jsonl":  # the default; without it the body is exactly OpenAI's
            body["output_format"] = output_format
        if webhook is not None:
            body["webhook"] = {"url": webhook} if isinstance(webhook, str) else dict(webhook)
        headers = {"content-type": _JSON}
        # Not resent after a lost answer: that could start the same batch twice.
        call = _Call("POST", "/v1/batches", _json.dumps(body), headers, idempotent=False)
        return _resource((yield from self._exchange(call)), "batch")

    def _batch_flow(self, batch_id: str, delay_s: float = 0.0) -> _Flow[dict[str, Any]]:
        call = _Call("GET", f"/v1/batches/{quote(batch_id, safe='')}", delay_s=delay_s)
        return _resource((yield from self._exchange(call)), "batch")

    def _batches_flow(self, after: str | None, limit: int | None) -> _Flow[Page[dict[str, Any]]]:
        query = {"after": after, "limit": limit}
        params = {key: str(value) for key, value in query.items() if value is not None}
        call = _Call("GET", "/v1/batches", params=params)
        return _page((yield from self._exchange(call)), "batch")

    def _cancel_batch_flow(self, batch_id: str) -> _Flow[dict[str, Any]]:
        # As a job's cancel: a resend could turn the first one's success into a 409.
        path = f"/v1/batches/{quote(batch_id, safe='')}/cancel"
        return _resource(
            (yield from self._exchange(_Call("POST", path, idempotent=False))), "batch"
        )

    def _wait_batch_flow(
        self, view: dict[str, Any], timeout: float | None, poll_s: float
    ) -> _Flow[dict[str, Any]]:
        """Polls until the batch is terminal. The first look is immediate, so `timeout=0`
        means "refresh and tell me"; `JobTimeoutError.job_id` is the batch id."""
        if poll_s <= 0:
            raise ValueError(f"poll_s must be positive, not {poll_s}")
        batch_id = view["id"]
        deadline = None if timeout is None else time.monotonic() + timeout
        delay, interval = 0.0, min(_FIRST_POLL_S, poll_s)
        while view["status"] not in _BATCH_TERMINAL:
            view = yield from self._batch_flow(batch_id, delay)
            left = math.inf if deadline is None else deadline - time.monotonic()
            if view["status"] not in _BATCH_TERMINAL and left <= 0:
                raise JobTimeoutError(
                    f"batch {batch_id} is still {view['status']} after {timeout}s", batch_id
                )
            delay, interval = min(interval, left), min(interval * 2, poll_s)
        return view

    def _download_batch_flow(
        self, view: Mapping[str, Any], dest_dir: str | os.PathLike[str]
    ) -> _Flow[dict[str, Path]]:
        stem = _UNSAFE_IN_NAME.sub("_", view["id"])
        output_format = _UNSAFE_IN_NAME.sub("_", str(view.get("output_format") or "jsonl"))
        names = {
            "output": (view.get("output_file_id"), f"{stem}_output.{output_format}"),
            "error": (view.get("error_file_id"), f"{stem}_errors.jsonl"),
            "ids": (view.get("ids_file_id"), f"{stem}_ids.jsonl"),
        }
        dest = Path(dest_dir)
        dest.mkdir(parents=True, exist_ok=True)
        paths = {}
        for kind, (file_id, name) in names.items():
            if file_id:
                paths[kind] = yield from self._download_file_flow(file_id, dest / name)
        return paths

    def _submit_batch_flow(
        self,
        file: FileInput,
        filename: str | None,
        output_format: str,
        metadata: Mapping[str, str] | None,
        webhook: str | Mapping[str, object] | None,
        wait: bool,
        timeout: float | None,
        poll_s: float,
    ) -> _Flow[dict[str, Any]]:
        uploaded = yield from self._upload_flow(file, "batch", filename)
        view = yield from self._create_batch_flow(uploaded["id"], output_format, metadata, webhook)
        if wait:
            view = yield from self._wait_batch_flow(view, timeout, poll_s)
        return view


# -- Jobs ----------------------------------------------------------------------------------------


class _JobState:
    """What a job handle knows, from the gateway's last view of it (`data`)."""

    def __init__(self, view: Mapping[str, Any]) -> None:
        self._set(view)

    def _set(self, view: Mapping[str, Any]) -> None:
        self.data: dict[str, Any] = dict(view)
        result = view.get("result")
        self._ids: list[str | None] = []
        self._vectors: npt.NDArray[np.float32] | None = None
        if result is not None:
            rows = result["items"]
            self._ids = [row.get("id") for row in rows]
            self._vectors = np.asarray([row["dense"] for row in rows], dtype=np.float32)

    @property
    def id(self) -> str:
        job_id: str = self.data["id"]
        return job_id

    @property
    def status(self) -> str:
        status: str = self.data["status"]
        return status

    @property
    def done(self) -> bool:
        return self.status in _TERMINAL

    @property
    def error(self) -> dict[str, str] | None:
        error: dict[str, str] | None = self.data.get("error")
        return error

    @property
    def vectors(self) -> npt.NDArray[np.float32]:
        """One float32 row per item, in input order."""
        if self._vectors is None:
            self._raise_if_failed()
            raise LoraqError(
                "JOB_NOT_FINISHED", None, f"job {self.id} is {self.status}; wait() for it first"
            )
        return self._vectors

    @property
    def items(self) -> list[EncodeResult]:
        """The results in `encode`'s shape, so code can take either path."""
        results = []
        for item_id, row in zip(self._ids, self.vectors, strict=True):
            result = EncodeResult(dense=row)
            if item_id is not None:
                result["id"] = item_id
            results.append(result)
        return results

    def _raise_if_failed(self) -> None:
        if self.status not in ("failed", "cancelled"):
            return
        error = self.error or {}
        code = error.get("code") or "JOB_CANCELLED"
        message = error.get("message") or f"job {self.id} was {self.status}"
        raise JobFailedError(code, message, self.id, self.data)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id!r}, status={self.status!r})"


class Job(_JobState):
    """A submitted job, bound to the `LoraqClient` that made it."""

    def __init__(self, client: LoraqClient, view: Mapping[str, Any]) -> None:
        super().__init__(view)
        self._client = client

    def refresh(self) -> Self:
        self._set(self._client._run(self._client._get_flow(self.id)))
        return self

    def wait(self, timeout: float | None = None) -> Self:
        """Until the job is terminal (`timeout` seconds at most, else `JobTimeoutError`);
        raises `JobFailedError` if it failed or was cancelled."""
        self._set(self._client._run(self._client._wait_flow(self.data, timeout)))
        self._raise_if_failed()
        return self

    def cancel(self) -> Self:
        self._set(self._client._run(self._client._cancel_flow(self.id)))
        return self


class AsyncJob(_JobState):
    """A submitted job, bound to the `AsyncLoraqClient` that made it."""

    def __init__(self, client: AsyncLoraqClient, view: Mapping[str, Any]) -> None:
        super().__init__(view)
        self._client = client

    async def refresh(self) -> Self:
        self._set(await self._client._run(self._client._get_flow(self.id)))
        return self

    async def wait(self, timeout: float | None = None) -> Self:
        """As `Job.wait`."""
        self._set(await self._client._run(self._client._wait_flow(self.data, timeout)))
        self._raise_if_failed()
        return self

    async def cancel(self) -> Self:
        self._set(await self._client._run(self._client._cancel_flow(self.id)))
        return self


# -- Batches -------------------------------------------------------------------------------------


class _BatchState:
    """What a batch handle knows, from the gateway's last view of it (`data`, OpenAI's Batch
    object with loraq's `output_format` and `ids_file_id`)."""

    def __init__(self, view: Mapping[str, Any]) -> None:
        self.data: dict[str, Any] = dict(view)

    @property
    def id(self) -> str:
        batch_id: str = self.data["id"]
        return batch_id

    @property
    def status(self) -> str:
        status: str = self.data["status"]
        return status

    @property
    def request_counts(self) -> dict[str, int]:
        counts: dict[str, int] | None = self.data.get("request_counts")
        return counts or {"total": 0, "completed": 0, "failed": 0}

    @property
    def output_file_id(self) -> str | None:
        return self._file_id("output_file_id")

    @property
    def error_file_id(self) -> str | None:
        return self._file_id("error_file_id")

    @property
    def ids_file_id(self) -> str | None:
        """The npy format's custom ids, one per row of the output."""
        return self._file_id("ids_file_id")

    @property
    def done(self) -> bool:
        return self.status in _BATCH_TERMINAL

    @property
    def ok(self) -> bool:
        """Ended `completed`. Lines may still have failed, each in the error file
        (`request_counts["failed"]`): a batch fails as a whole only when it cannot run."""
        return self.status == "completed"

    def _file_id(self, key: str) -> str | None:
        file_id: str | None = self.data.get(key)
        return file_id

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id!r}, status={self.status!r})"


class Batch(_BatchState):
    """A batch, bound to the `LoraqClient` that made or fetched it."""

    def __init__(self, client: LoraqClient, view: Mapping[str, Any]) -> None:
        super().__init__(view)
        self._client = client

    def refresh(self) -> Self:
        self.data = self._client._run(self._client._batch_flow(self.id))
        return self

    def wait(self, timeout: float | None = None, poll_s: float = DEFAULT_POLL_S) -> Self:
        """Until the batch is terminal, whichever way it ended (see `ok`); `JobTimeoutError`
        after `timeout` seconds, the batch going on. Polls at most every `poll_s` seconds."""
        self.data = self._client._run(self._client._wait_batch_flow(self.data, timeout, poll_s))
        return self

    def cancel(self) -> Self:
        self.data = self._client._run(self._client._cancel_batch_flow(self.id))
        return self

    def download(self, dest_dir: str | os.PathLike[str]) -> dict[str, Path]:
        """The output, error and ids files this view names, written into `dest_dir` as
        `<batch id>_output.<format>`, `_errors.jsonl`, `_ids.jsonl`; their paths by kind
        ("output", "error", "ids"). Uses the last view: `wait()` first."""
        return self._client._run(self._client._download_batch_flow(self.data, dest_dir))


class AsyncBatch(_BatchState):
    """A batch, bound to the `AsyncLoraqClient` that made or fetched it."""

    def __init__(self, client: AsyncLoraqClient, view: Mapping[str, Any]) -> None:
        super().__init__(view)
        self._client = client

    async def refresh(self) -> Self:
        self.data = await self._client._run(self._client._batch_flow(self.id))
        return self

    async def wait(self, timeout: float | None = None, poll_s: float = DEFAULT_POLL_S) -> Self:
        """As `Batch.wait`."""
        flow = self._client._wait_batch_flow(self.data, timeout, poll_s)
        self.data = await self._client._run(flow)
        return self

    async def cancel(self) -> Self:
        self.data = await self._client._run(self._client._cancel_batch_flow(self.id))
        return self

    async def download(self, dest_dir: str | os.PathLike[str]) -> dict[str, Path]:
        """As `Batch.download`."""
        return await self._client._run(self._client._download_batch_flow(self.data, dest_dir))


# -- Webhooks ------------------------------------------------------------------------------------


def verify_webhook(headers: Mapping[str, str], body: bytes | str, secret: str) -> dict[str, Any]:
    """The event of a loraq webhook (`{"type": "job.succeeded", "timestamp", "data": job}`)
    once its Standard Webhooks signature and timestamp (5 minutes' tolerance, against replays)
    check out. Pass the raw body bytes: a re-serialized body no longer matches its signature.
    A malformed secret raises ValueError, since that is the receiver's bug, not the sender's."""
    signer = Webhook(secret)
    try:
        event = signer.verify(body, {k.lower(): v for k, v in headers.items()})
    except (_StandardWebhooksError, ValueError) as exc:
        raise WebhookVerificationError(f"invalid webhook: {exc}") from exc
    if not isinstance(event, dict):
        raise WebhookVerificationError("invalid webhook: the body is not an event object")
    return event


# -- Clients -------------------------------------------------------------------------------------


class LoraqClient(_Core):
    """Blocking client. `http_client` lets you bring your own (proxies, TLS, tests); `sleep`
    is what retries wait with."""

    verify_webhook = staticmethod(verify_webhook)

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        max_retries: int = DEFAULT_MAX_RETRIES,
        *,
        http_client: httpx.Client | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(base_url, api_key, timeout, max_retries)
        self._owns_http = http_client is None
        self._http = http_client or httpx.Client()
        self._sleep = sleep

    def _run(self, flow: _Flow[_T]) -> _T:
        step = _advance(flow, None)
        while isinstance(step, _Call):
            if step.delay_s > 0:
                self._sleep(step.delay_s)
            outcome: httpx.Response | httpx.RequestError
            try:
                outcome = self._send(step)
            except httpx.RequestError as exc:
                outcome = exc
            step = _advance(flow, outcome)
        return step.value

    def _send(self, call: _Call) -> httpx.Response:
        args = self._request_args(call)
        if call.download_to is None:
            return self._http.request(**args)
        response = self._http.send(self._http.build_request(**args), stream=True)
        try:
            if response.is_success:
                with _partial_file(call.download_to) as out:
                    for chunk in response.iter_bytes():
                        out.write(chunk)
            else:
                response.read()
        finally:
            response.close()
        return response

    def encode(
        self,
        model: str,
        items: Iterable[ItemLike],
        options: Mapping[str, object] | None = None,
    ) -> list[EncodeResult]:
        """One result per item, in order, through the sync endpoint (waits for the batch).
        Raises `JobTimeoutError` (with `job_id`, to wait on) if the gateway stops waiting."""
        return self._run(self._encode_flow(model, items, options))

    def submit(
        self,
        model: str,
        items: Iterable[ItemLike],
        options: Mapping[str, object] | None = None,
        webhook: str | Mapping[str, object] | None = None,
        idempotency_key: str | None = None,
    ) -> Job:
        """Queue a job and return at once. `webhook`: a URL, or {"url", "events"}. Without an
        `idempotency_key` a fresh one is made, so retries of this call never make two jobs."""
        flow = self._submit_flow(model, items, options, webhook, idempotency_key)
        return Job(self, self._run(flow))

    def get(self, job_id: str) -> Job:
        return Job(self, self._run(self._get_flow(job_id)))

    def cancel(self, job_id: str) -> Job:
        return Job(self, self._run(self._cancel_flow(job_id)))

    def upload_file(
        self, file: FileInput, purpose: str = "batch", filename: str | None = None
    ) -> dict[str, Any]:
        """The FileObject of a new file. A path or file object is streamed, never read into
        memory; `filename` defaults to the path's or file object's name."""
        return self._run(self._upload_flow(file, purpose, filename))

    def file(self, file_id: str) -> dict[str, Any]:
        return self._run(self._file_flow(file_id))

    def files(
        self,
        purpose: str | None = None,
        limit: int | None = None,
        after: str | None = None,
        order: str | None = None,
    ) -> Page[dict[str, Any]]:
        """One page of FileObjects; `iter_files` walks them all."""
        return self._run(self._files_flow(purpose, limit, after, order))

    def iter_files(
        self, purpose: str | None = None, order: str | None = None, page_size: int | None = None
    ) -> Iterator[dict[str, Any]]:
        return _pages(lambda after: self.files(purpose, page_size, after, order))

    def file_content(self, file_id: str) -> bytes:
        """A file's bytes in memory; `download_file` for large ones."""
        return self._run(self._file_content_flow(file_id))

    def download_file(self, file_id: str, dest: str | os.PathLike[str]) -> Path:
        """A file's content streamed into `dest` (complete, or not there at all)."""
        return self._run(self._download_file_flow(file_id, Path(dest)))

    def delete_file(self, file_id: str) -> dict[str, Any]:
        return self._run(self._delete_file_flow(file_id))

    def push_adapter(
        self, source: str | os.PathLike[str], name: str, *, model: str | None = None
    ) -> dict[str, Any]:
        """Uploads a PEFT adapter (its directory, or a .tar/.tar.gz/.zip of it) as a new
        revision of `name` (`<your tenant>/<name>`), checked by the gateway as a worker would
        load it; returns the adapter, whose `latest` is the revision's hash. `model`: the base
        model it is for (default: the gateway's first)."""
        return self._run(self._push_adapter_flow(Path(source), name, model))

    def adapter(self, name: str) -> dict[str, Any]:
        return self._run(self._adapter_flow(name))

    def adapters(self, limit: int | None = None, after: str | None = None) -> Page[dict[str, Any]]:
        """One page of the adapters this key's tenant holds or is shared, by name."""
        return self._run(self._adapters_flow(limit, after))

    def iter_adapters(self, page_size: int | None = None) -> Iterator[dict[str, Any]]:
        return _pages(lambda after: self.adapters(page_size, after))

    def delete_adapter(self, name: str) -> dict[str, Any]:
        return self._run(self._adapter_flow(name, "DELETE"))

    def pin_adapter(self, name: str) -> dict[str, Any]:
        return self._run(self._adapter_flow(name, "POST", "pin"))

    def unpin_adapter(self, name: str) -> dict[str, Any]:
        return self._run(self._adapter_flow(name, "POST", "unpin"))

    def share_adapter(self, name: str, tenants: Sequence[str]) -> dict[str, Any]:
        """The tenants that may use the adapter, replacing the former list."""
        return self._run(self._adapter_flow(name, "PUT", "sharing", {"tenants": list(tenants)}))

    def create_batch(
        self,
        input_file_id: str,
        *,
        output_format: str = "jsonl",
        metadata: Mapping[str, str] | None = None,
        webhook: str | Mapping[str, object] | None = None,
    ) -> Batch:
        """A batch of `/v1/embeddings` lines from an uploaded file. `output_format`: "jsonl"
        (OpenAI's lines), "parquet" or "npy" (plus an ids file). `webhook`: a URL, or
        {"url", "events": ["completed", "failed", "expired", "cancelled"]}."""
        flow = self._create_batch_flow(input_file_id, output_format, metadata, webhook)
        return Batch(self, self._run(flow))

    def submit_batch(
        self,
        file: FileInput,
        *,
        filename: str | None = None,
        output_format: str = "jsonl",
        metadata: Mapping[str, str] | None = None,
        webhook: str | Mapping[str, object] | None = None,
        wait: bool = False,
        timeout: float | None = None,
        poll_s: float = DEFAULT_POLL_S,
    ) -> Batch:
        """`upload_file` then `create_batch`, then with `wait` `Batch.wait(timeout, poll_s)`."""
        flow = self._submit_batch_flow(
            file, filename, output_format, metadata, webhook, wait, timeout, poll_s
        )
        return Batch(self, self._run(flow))

    def batch(self, batch_id: str) -> Batch:
        return Batch(self, self._run(self._batch_flow(batch_id)))

    def batches(self, after: str | None = None, limit: int | None = None) -> Page[Batch]:
        """One page of batches, newest first; `iter_batches` walks them all."""
        return self._run(self._batches_flow(after, limit)).map(lambda view: Batch(self, view))

    def iter_batches(self, page_size: int | None = None) -> Iterator[Batch]:
        return _pages(lambda after: self.batches(after, page_size))

    def cancel_batch(self, batch_id: str) -> Batch:
        return Batch(self, self._run(self._cancel_batch_flow(batch_id)))

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncLoraqClient(_Core):
    """asyncio client; the same operations as `LoraqClient`, awaited."""

    verify_webhook = staticmethod(verify_webhook)

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        max_retries: int = DEFAULT_MAX_RETRIES,
        *,
        http_client: httpx.AsyncClient | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        super().__init__(base_url, api_key, timeout, max_retries)
        self._owns_http = http_client is None
        self._http = http_client or httpx.AsyncClient()
        self._sleep = sleep

    async def _run(self, flow: _Flow[_T]) -> _T:
        step = _advance(flow, None)
        while isinstance(step, _Call):
            if step.delay_s > 0:
                await self._sleep(step.delay_s)
            outcome: httpx.Response | httpx.RequestError
            try:
                outcome = await self._send(step)
            except httpx.RequestError as exc:
                outcome = exc
            step = _advance(flow, outcome)
        return step.value

    async def _send(self, call: _Call) -> httpx.Response:
        """As `LoraqClient._send`; the file is written in the event loop, chunk by chunk."""
        args = self._request_args(call)
        if call.download_to is None:
            return await self._http.request(**args)
        response = await self._http.send(self._http.build_request(**args), stream=True)
        try:
            if response.is_success:
                with _partial_file(call.download_to) as out:
                    async for chunk in response.aiter_bytes():
                        out.write(chunk)
            else:
                await response.aread()
        finally:
            await response.aclose()
        return response

    async def encode(
        self,
        model: str,
        items: Iterable[ItemLike],
        options: Mapping[str, object] | None = None,
    ) -> list[EncodeResult]:
        """As `LoraqClient.encode`."""
        return await self._run(self._encode_flow(model, items, options))

    async def submit(
        self,
        model: str,
        items: Iterable[ItemLike],
        options: Mapping[str, object] | None = None,
        webhook: str | Mapping[str, object] | None = None,
        idempotency_key: str | None = None,
    ) -> AsyncJob:
        """As `LoraqClient.submit`."""
        flow = self._submit_flow(model, items, options, webhook, idempotency_key)
        return AsyncJob(self, await self._run(flow))

    async def get(self, job_id: str) -> AsyncJob:
        return AsyncJob(self, await self._run(self._get_flow(job_id)))

    async def cancel(self, job_id: str) -> AsyncJob:
        return AsyncJob(self, await self._run(self._cancel_flow(job_id)))

    async def upload_file(
        self, file: FileInput, purpose: str = "batch", filename: str | None = None
    ) -> dict[str, Any]:
        """As `LoraqClient.upload_file`; the file is read in the event loop, chunk by chunk."""
        return await self._run(self._upload_flow(file, purpose, filename))

    async def file(self, file_id: str) -> dict[str, Any]:
        return await self._run(self._file_flow(file_id))

    async def files(
        self,
        purpose: str | None = None,
        limit: int | None = None,
        after: str | None = None,
        order: str | None = None,
    ) -> Page[dict[str, Any]]:
        return await self._run(self._files_flow(purpose, limit, after, order))

    def iter_files(
        self, purpose: str | None = None, order: str | None = None, page_size: int | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        return _apages(lambda after: self.files(purpose, page_size, after, order))

    async def file_content(self, file_id: str) -> bytes:
        return await self._run(self._file_content_flow(file_id))

    async def download_file(self, file_id: str, dest: str | os.PathLike[str]) -> Path:
        return await self._run(self._download_file_flow(file_id, Path(dest)))

    async def delete_file(self, file_id: str) -> dict[str, Any]:
        return await self._run(self._delete_file_flow(file_id))

    async def push_adapter(
        self, source: str | os.PathLike[str], name: str, *, model: str | None = None
    ) -> dict[str, Any]:
        """As `LoraqClient.push_adapter`."""
        return await self._run(self._push_adapter_flow(Path(source), name, model))

    async def adapter(self, name: str) -> dict[str, Any]:
        return await self._run(self._adapter_flow(name))

    async def adapters(
        self, limit: int | None = None, after: str | None = None
    ) -> Page[dict[str, Any]]:
        return await self._run(self._adapters_flow(limit, after))

    def iter_adapters(self, page_size: int | None = None) -> AsyncIterator[dict[str, Any]]:
        return _apages(lambda after: self.adapters(page_size, after))

    async def delete_adapter(self, name: str) -> dict[str, Any]:
        return await self._run(self._adapter_flow(name, "DELETE"))

    async def pin_adapter(self, name: str) -> dict[str, Any]:
        return await self._run(self._adapter_flow(name, "POST", "pin"))

    async def unpin_adapter(self, name: str) -> dict[str, Any]:
        return await self._run(self._adapter_flow(name, "POST", "unpin"))

    async def share_adapter(self, name: str, tenants: Sequence[str]) -> dict[str, Any]:
        return await self._run(
            self._adapter_flow(name, "PUT", "sharing", {"tenants": list(tenants)})
        )

    async def create_batch(
        self,
        input_file_id: str,
        *,
        output_format: str = "jsonl",
        metadata: Mapping[str, str] | None = None,
        webhook: str | Mapping[str, object] | None = None,
    ) -> AsyncBatch:
        """As `LoraqClient.create_batch`."""
        flow = self._create_batch_flow(input_file_id, output_format, metadata, webhook)
        return AsyncBatch(self, await self._run(flow))

    async def submit_batch(
        self,
        file: FileInput,
        *,
        filename: str | None = None,
        output_format: str = "jsonl",
        metadata: Mapping[str, str] | None = None,
        webhook: str | Mapping[str, object] | None = None,
        wait: bool = False,
        timeout: float | None = None,
        poll_s: float = DEFAULT_POLL_S,
    ) -> AsyncBatch:
        """As `LoraqClient.submit_batch`."""
        flow = self._submit_batch_flow(
            file, filename, output_format, metadata, webhook, wait, timeout, poll_s
        )
        return AsyncBatch(self, await self._run(flow))

    async def batch(self, batch_id: str) -> AsyncBatch:
        return AsyncBatch(self, await self._run(self._batch_flow(batch_id)))

    async def batches(self, after: str | None = None, limit: int | None = None) -> Page[AsyncBatch]:
        page = await self._run(self._batches_flow(after, limit))
        return page.map(lambda view: AsyncBatch(self, view))

    def iter_batches(self, page_size: int | None = None) -> AsyncIterator[AsyncBatch]:
        return _apages(lambda after: self.batches(after, page_size))

    async def cancel_batch(self, batch_id: str) -> AsyncBatch:
        return AsyncBatch(self, await self._run(self._cancel_batch_flow(batch_id)))

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
