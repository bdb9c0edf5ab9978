"""The Python client without a server: httpx.MockTransport answers, sleeps are recorded.

Each behaviour runs through both clients: a test body is written once as a coroutine that
calls the client through `aw`, which awaits for the async client and passes values through for
the sync one, so sync and async are held to the same behaviour.
"""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import io
import json
import sys
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib.metadata import EntryPoint
from types import ModuleType
from typing import Any, TypedDict

import httpx
import msgpack
import msgpack_numpy
import numpy as np
import orjson
import pytest
from standardwebhooks.webhooks import Webhook

from loraq_client import (
    APIConnectionError,
    AsyncLoraqClient,
    AuthenticationError,
    InvalidRequestError,
    InvalidResponseError,
    Item,
    ItemLike,
    JobFailedError,
    JobTimeoutError,
    LoraqClient,
    LoraqError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    WebhookVerificationError,
    cli,
    coerce_items,
    verify_webhook,
)
from loraq_client.cli import _Progress, _read_lines

URL = "http://gateway.test"
MODEL = "BAAI/bge-m3"
JOB_ID = "job_0123456789abcdefghij"
Handler = Callable[[httpx.Request], httpx.Response]
Op = Callable[[Any, Callable[[Any], Awaitable[Any]]], Coroutine[Any, Any, Any]]


@dataclass
class Recorder:
    """The requests the fake gateway saw and the sleeps the client asked for."""

    requests: list[httpx.Request] = field(default_factory=list)
    sleeps: list[float] = field(default_factory=list)


async def _passthrough(value: Any) -> Any:
    return value


async def _await(value: Any) -> Any:
    return await value


@pytest.fixture(params=["sync", "async"])
def run(request: pytest.FixtureRequest) -> Callable[..., tuple[Any, Recorder]]:
    """`run(handler, op, **client_kwargs)`: `op(client, aw)` against the fake gateway, with
    the client kind of this parametrization; returns op's result and what was recorded."""

    def runner(handler: Handler, op: Op, **kwargs: Any) -> tuple[Any, Recorder]:
        seen = Recorder()

        def record(req: httpx.Request) -> httpx.Response:
            seen.requests.append(req)
            return handler(req)

        transport = httpx.MockTransport(record)
        kwargs.setdefault("max_retries", 3)
        if request.param == "sync":
            sync = LoraqClient(
                URL, http_client=httpx.Client(transport=transport), sleep=seen.sleeps.append,
                **kwargs,
            )  # fmt: skip
            with sync:
                return asyncio.run(op(sync, _passthrough)), seen

        async def fake_sleep(seconds: float) -> None:
            seen.sleeps.append(seconds)

        async def main() -> Any:
            http = httpx.AsyncClient(transport=transport)
            async with (
                http,
                AsyncLoraqClient(URL, http_client=http, sleep=fake_sleep, **kwargs) as c,
            ):
                return await op(c, _await)

        return asyncio.run(main()), seen

    return runner


def error(status: int, code: str, retry_after: str | None = None, **extra: str) -> httpx.Response:
    headers = {"x-sie-error-code": code}
    if retry_after is not None:
        headers["retry-after"] = retry_after
    body = {"error": {"code": code, "message": f"{code} happened", **extra}}
    return httpx.Response(status, json=body, headers=headers)


def created(status: int = 202) -> httpx.Response:
    body = {
        "id": JOB_ID,
        "status": "queued",
        "created_at": "2026-01-01T00:00:00Z",
        "links": {"self": f"/v1/jobs/{JOB_ID}"},
    }
    return httpx.Response(status, json=body, headers={"location": f"/v1/jobs/{JOB_ID}"})


def view(status: str, rows: list[list[float]] | None = None, **fields: Any) -> httpx.Response:
    result = None
    if rows is not None:
        result = {"items": [{"id": f"i{k}", "dense": row} for k, row in enumerate(rows)]}
    body = {"id": JOB_ID, "status": status, "error": None, "result": result, **fields}
    return httpx.Response(200, json=body)


def sie_answer(rows: np.ndarray, ids: list[str | None]) -> httpx.Response:
    items = []
    for item_id, row in zip(ids, rows, strict=True):
        item: dict[str, Any] = {"dense": {"dims": len(row), "dtype": "float32", "values": row}}
        if item_id is not None:
            item["id"] = item_id
        items.append(item)
    body = msgpack.packb(
        {"model": MODEL, "items": items, "timing": {"total_ms": 1.0}},
        default=msgpack_numpy.encode,
        use_bin_type=True,
    )
    return httpx.Response(200, content=body, headers={"content-type": "application/msgpack"})


def sequence(*responses: httpx.Response | Exception) -> Handler:
    """Answers in this order (the last one repeats); an exception is raised as the transport's.
    Each answer is a fresh copy: a response's stream belongs to the one client that read it."""
    queue = list(responses)

    def handler(request: httpx.Request) -> httpx.Response:
        answer = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(answer, Exception):
            raise answer
        return httpx.Response(answer.status_code, headers=answer.headers, content=answer.content)

    return handler


async def submit_one(c: Any, aw: Callable[[Any], Awaitable[Any]]) -> Any:
    return await aw(c.submit(MODEL, ["hello"]))


# -- Retries -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code"), [(429, "QUEUE_FULL"), (429, "QUOTA_EXCEEDED"), (503, "QUEUE_UNAVAILABLE")]
)
def test_retries_honour_retry_after_with_one_idempotency_key(
    run: Callable[..., tuple[Any, Recorder]], status: int, code: str
) -> None:
    handler = sequence(error(status, code, "3"), error(status, code, "7"), created())
    job, seen = run(handler, submit_one)
    assert job.id == JOB_ID and job.status == "queued"
    assert seen.sleeps == [3.0, 7.0]
    keys = {r.headers["idempotency-key"] for r in seen.requests}
    assert len(seen.requests) == 3 and len(keys) == 1 and keys != {""}


def test_each_submit_gets_its_own_key_unless_given(
    run: Callable[..., tuple[Any, Recorder]],
) -> None:
    async def op(c: Any, aw: Callable[[Any], Awaitable[Any]]) -> None:
        await aw(c.submit(MODEL, ["a"]))
        await aw(c.submit(MODEL, ["a"]))
        await aw(c.submit(MODEL, ["a"], idempotency_key="mine"))

    _, seen = run(sequence(created()), op)
    first, second, third = (r.headers["idempotency-key"] for r in seen.requests)
    assert first != second and third == "mine"


@pytest.mark.parametrize(
    "retry_after", [None, "soon", "-1", "inf", "Fri, 01 Jan 2027 00:00:00 GMT"]
)
def test_backoff_without_usable_retry_after(
    run: Callable[..., tuple[Any, Recorder]], retry_after: str | None
) -> None:
    unavailable = error(503, "QUEUE_UNAVAILABLE", retry_after)
    handler = sequence(unavailable, unavailable, created())
    _, seen = run(handler, submit_one)
    assert len(seen.sleeps) == 2
    assert 0.25 <= seen.sleeps[0] <= 0.5 and 0.5 <= seen.sleeps[1] <= 1.0


def test_a_503s_retry_after_is_a_floor_under_a_growing_backoff(
    run: Callable[..., tuple[Any, Recorder]],
) -> None:
    """During a Redis failover the gateway answers 503 with `Retry-After: 1` until a new
    primary takes writes; the default retries must outlast that, so a 503's delays grow past
    its Retry-After (a 429's, the gateway's own knowledge, is kept as is)."""
    unavailable = error(503, "QUEUE_UNAVAILABLE", "1")
    _, seen = run(sequence(*[unavailable] * 8, created()), submit_one, max_retries=8)
    assert len(seen.sleeps) == 8 and min(seen.sleeps) >= 1.0
    assert all(s >= 4.0 for s in seen.sleeps[4:]) and sum(seen.sleeps) >= 20.0
    full = error(429, "QUEUE_FULL", "1")
    _, seen = run(sequence(*[full] * 4, created()), submit_one, max_retries=8)
    assert seen.sleeps == [1.0] * 4


def test_gives_up_after_max_retries(run: Callable[..., tuple[Any, Recorder]]) -> None:
    with pytest.raises(RateLimitError) as caught:
        run(sequence(error(429, "QUEUE_FULL", "1")), submit_one, max_retries=2)
    assert (caught.value.code, caught.value.status, caught.value.retry_after) == (
        "QUEUE_FULL", 429, 1.0,
    )  # fmt: skip


def test_sync_encode_is_retried_on_429_too(run: Callable[..., tuple[Any, Recorder]]) -> None:
    rows = np.ones((1, 4), dtype=np.float32)
    handler = sequence(error(429, "QUEUE_FULL", "2"), sie_answer(rows, [None]))

    async def op(c: Any, aw: Callable[[Any], Awaitable[Any]]) -> Any:
        return await aw(c.encode(MODEL, ["x"]))

    results, seen = run(handler, op)
    assert seen.sleeps == [2.0] and len(results) == 1


def test_connection_errors(run: Callable[..., tuple[Any, Recorder]]) -> None:
    """A GET is resent after any transport error; an encode only when it cannot have left."""
    refused = httpx.ConnectError("refused")
    broken = httpx.ReadError("connection reset")
    rows = np.ones((1, 4), dtype=np.float32)

    async def get(c: Any, aw: Callable[[Any], Awaitable[Any]]) -> Any:
        return await aw(c.get(JOB_ID))

    async def encode(c: Any, aw: Callable[[Any], Awaitable[Any]]) -> Any:
        return await aw(c.encode(MODEL, ["x"]))

    job, seen = run(sequence(refused, broken, view("running")), get)
    assert job.status == "running" and len(seen.requests) == 3 and len(seen.sleeps) == 2

    results, seen = run(sequence(refused, sie_answer(rows, [None])), encode)
    assert len(results) == 1 and len(seen.requests) == 2

    with pytest.raises(APIConnectionError) as caught:
        run(sequence(broken, sie_answer(rows, [None])), encode)
    assert caught.value.code == "CONNECTION_ERROR" and caught.value.status is None

    with pytest.raises(APIConnectionError):
        run(sequence(refused), get, max_retries=1)


# -- Typed errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "cls", "code"),
    [
        (error(401, "UNAUTHORIZED"), AuthenticationError, "UNAUTHORIZED"),
        (error(403, "ADAPTER_FORBIDDEN"), PermissionDeniedError, "ADAPTER_FORBIDDEN"),
        (error(404, "JOB_NOT_FOUND"), NotFoundError, "JOB_NOT_FOUND"),
        (error(409, "JOB_NOT_CANCELLABLE"), InvalidRequestError, "JOB_NOT_CANCELLABLE"),
        (error(422, "INVALID_LORA_ID"), InvalidRequestError, "INVALID_LORA_ID"),
        (error(500, "ENCODE_FAILED"), ServerError, "ENCODE_FAILED"),
        (
            httpx.Response(404, headers={"x-sie-error-code": "NOT_FOUND"}),
            NotFoundError,
            "NOT_FOUND",
        ),
        (httpx.Response(502, text="<html>bad gateway</html>"), ServerError, "HTTP_502"),
    ],
)
def test_errors_are_typed_by_status_and_keep_the_code(
    run: Callable[..., tuple[Any, Recorder]],
    response: httpx.Response,
    cls: type[LoraqError],
    code: str,
) -> None:
    with pytest.raises(cls) as caught:
        run(sequence(response), submit_one)
    assert isinstance(caught.value, LoraqError)
    assert (caught.value.code, caught.value.status) == (code, response.status_code)
    assert code in str(caught.value)


def test_sync_encode_timeout_carries_the_job_id(run: Callable[..., tuple[Any, Recorder]]) -> None:
    async def op(c: Any, aw: Callable[[Any], Awaitable[Any]]) -> Any:
        return await aw(c.encode(MODEL, ["x"]))

    with pytest.raises(JobTimeoutError) as caught:
        run(sequence(error(504, "JOB_TIMEOUT", job_id=JOB_ID)), op)
    assert (caught.value.job_id, caught.value.status, caught.value.code) == (
        JOB_ID, 504, "JOB_TIMEOUT",
    )  # fmt: skip


def test_unreadable_answers(run: Callable[..., tuple[Any, Recorder]]) -> None:
    async def get(c: Any, aw: Callable[[Any], Awaitable[Any]]) -> Any:
        return await aw(c.get(JOB_ID))

    async def encode(c: Any, aw: Callable[[Any], Awaitable[Any]]) -> Any:
        return await aw(c.encode(MODEL, ["x", "y"]))

    with pytest.raises(InvalidResponseError):
        run(sequence(httpx.Response(200, text="<html>portal</html>")), get)
    one_row = sie_answer(np.ones((1, 4), dtype=np.float32), [None])
    with pytest.raises(InvalidResponseError, match="1 results for 2 items"):
        run(sequence(one_row), encode)


# -- Encode, items -------------------------------------------------------------------------------


def test_encode_speaks_sie_msgpack(run: Callable[..., tuple[Any, Recorder]]) -> None:
    rows = np.arange(12, dtype=np.float32).reshape(3, 4) / 7

    async def op(c: Any, aw: Callable[[Any], Awaitable[Any]]) -> Any:
        items = ["plain", {"id": "b", "text": "mapped"}, {"text": "no id"}]
        return await aw(c.encode(MODEL, items, options={"lora_id": "org/a", "is_query": True}))

    results, seen = run(sequence(sie_answer(rows, [None, "b", None])), op)
    (request,) = seen.requests
    assert request.method == "POST" and request.url.path == f"/v1/encode/{MODEL}"
    assert request.headers["content-type"] == request.headers["accept"] == "application/msgpack"
    assert msgpack.unpackb(request.content) == {
        "items": [{"text": "plain"}, {"id": "b", "text": "mapped"}, {"text": "no id"}],
        "params": {"options": {"lora_id": "org/a", "is_query": True}},
    }
    assert [r.get("id") for r in results] == [None, "b", None]
    for result, row in zip(results, rows, strict=True):
        assert isinstance(result["dense"], np.ndarray) and result["dense"].dtype == np.float32
        np.testing.assert_array_equal(result["dense"], row)


def test_api_key_goes_in_every_request(run: Callable[..., tuple[Any, Recorder]]) -> None:
    _, seen = run(sequence(created()), submit_one, api_key="lq_secret")
    assert seen.requests[0].headers["authorization"] == "Bearer lq_secret"
    _, seen = run(sequence(created()), submit_one)
    assert "authorization" not in seen.requests[0].headers


class SieItem(TypedDict, total=False):
    """How sie-sdk declares `Item` (a TypedDict); other versions use a dataclass."""

    id: str
    text: str


@dataclass
class DataclassItem:
    text: str
    id: str | None = None


class TextOnly:
    def __init__(self, text: str) -> None:
        self.text = text


def test_item_coercion() -> None:
    items: list[ItemLike] = [
        "plain",
        {"text": "dict"},
        SieItem(id="t", text="typed dict"),
        DataclassItem("dataclass", id="d"),
        DataclassItem("dataclass without id"),
        TextOnly("attribute"),
        Item(text="loraq's own", id="o"),
    ]
    assert coerce_items(items) == [
        {"text": "plain"},
        {"text": "dict"},
        {"id": "t", "text": "typed dict"},
        {"id": "d", "text": "dataclass"},
        {"text": "dataclass without id"},
        {"text": "attribute"},
        {"id": "o", "text": "loraq's own"},
    ]
    assert coerce_items(item for item in ["lazy"]) == [{"text": "lazy"}]
    with pytest.raises(TypeError, match="list of items"):
        coerce_items("not a list")
    with pytest.raises(TypeError, match="list of items"):
        coerce_items({"text": "one item"})
    with pytest.raises(TypeError, match="item 1 has no text"):
        coerce_items(["ok", {"images": ["x.png"]}])


# -- Jobs ----------------------------------------------------------------------------------------


def test_submit_body_and_webhook(run: Callable[..., tuple[Any, Recorder]]) -> None:
    async def op(c: Any, aw: Callable[[Any], Awaitable[Any]]) -> None:
        await aw(c.submit(MODEL, [{"id": "a", "text": "x"}], {"lora_id": "o/n"}, "https://h/x"))
        await aw(c.submit(MODEL, ["y"], webhook={"url": "https://h/y", "events": ["failed"]}))

    _, seen = run(sequence(created()), op)
    first, second = (orjson.loads(r.content) for r in seen.requests)
    assert first == {
        "model": MODEL,
        "items": [{"id": "a", "text": "x"}],
        "params": {"options": {"lora_id": "o/n"}},
        "webhook": {"url": "https://h/x"},
    }
    assert second["webhook"] == {"url": "https://h/y", "events": ["failed"]}
    assert second["params"] == {"options": {}}


def test_wait_long_polls_until_terminal(run: Callable[..., tuple[Any, Recorder]]) -> None:
    rows = [[0.5, -1.0, 2.0], [1.0, 0.0, -0.25]]
    handler = sequence(created(), view("queued"), view("running"), view("succeeded", rows))

    async def op(c: Any, aw: Callable[[Any], Awaitable[Any]]) -> Any:
        job = await aw(c.submit(MODEL, ["a", "b"]))
        assert await aw(job.wait()) is job
        return job

    job, seen = run(handler, op)
    polls = seen.requests[1:]
    assert [r.url.path for r in polls] == [f"/v1/jobs/{JOB_ID}"] * 3
    assert all(float(r.url.params["wait"]) == 60 for r in polls)
    assert job.done and job.status == "succeeded" and job.error is None
    assert job.vectors.dtype == np.float32 and job.vectors.shape == (2, 3)
    np.testing.assert_array_equal(job.vectors, np.array(rows, dtype=np.float32))
    assert [item["id"] for item in job.items] == ["i0", "i1"]
    np.testing.assert_array_equal(job.items[1]["dense"], job.vectors[1])


def test_wait_gives_up_at_its_timeout(run: Callable[..., tuple[Any, Recorder]]) -> None:
    async def op(c: Any, aw: Callable[[Any], Awaitable[Any]]) -> Any:
        job = await aw(c.get(JOB_ID))
        return await aw(job.wait(timeout=0.05))

    with pytest.raises(JobTimeoutError) as caught:
        run(sequence(view("running")), op)
    assert caught.value.job_id == JOB_ID and caught.value.status is None
    assert "still running" in caught.value.message


@pytest.mark.parametrize(
    ("status", "job_error", "code"),
    [
        (
            "failed",
            {"code": "ADAPTER_NOT_FOUND", "message": "no such adapter"},
            "ADAPTER_NOT_FOUND",
        ),
        ("cancelled", None, "JOB_CANCELLED"),
    ],
)
def test_wait_raises_with_the_jobs_code(
    run: Callable[..., tuple[Any, Recorder]],
    status: str,
    job_error: dict[str, str] | None,
    code: str,
) -> None:
    async def op(c: Any, aw: Callable[[Any], Awaitable[Any]]) -> Any:
        job = await aw(c.get(JOB_ID))
        return await aw(job.wait())

    handler = sequence(view("running"), view(status, error=job_error))
    with pytest.raises(JobFailedError) as caught:
        run(handler, op)
    assert (caught.value.code, caught.value.job_id) == (code, JOB_ID)
    assert caught.value.view["status"] == status


def test_vectors_of_an_unfinished_or_failed_job(run: Callable[..., tuple[Any, Recorder]]) -> None:
    async def op(c: Any, aw: Callable[[Any], Awaitable[Any]]) -> Any:
        return await aw(c.get(JOB_ID))

    job, _ = run(sequence(view("running")), op)
    with pytest.raises(LoraqError, match="wait"):
        _ = job.vectors
    job, _ = run(sequence(view("cancelled")), op)
    with pytest.raises(JobFailedError):
        _ = job.items


def test_cancel_and_refresh(run: Callable[..., tuple[Any, Recorder]]) -> None:
    handler = sequence(created(), view("queued"), view("cancelled"))

    async def op(c: Any, aw: Callable[[Any], Awaitable[Any]]) -> Any:
        job = await aw(c.submit(MODEL, ["a"]))
        await aw(job.refresh())
        return await aw(job.cancel())

    job, seen = run(handler, op)
    assert [r.method for r in seen.requests] == ["POST", "GET", "DELETE"]
    assert job.status == "cancelled"

    async def by_id(c: Any, aw: Callable[[Any], Awaitable[Any]]) -> Any:
        return await aw(c.cancel(JOB_ID))

    with pytest.raises(InvalidRequestError) as caught:
        run(sequence(error(409, "JOB_NOT_CANCELLABLE")), by_id)
    assert caught.value.code == "JOB_NOT_CANCELLABLE"


# -- Webhooks ------------------------------------------------------------------------------------

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


def signed(body: bytes, secret: str = SECRET, at: datetime | None = None) -> dict[str, str]:
    at = at or datetime.now(UTC)
    return {
        "Webhook-Id": f"msg_{JOB_ID}",
        "Webhook-Timestamp": str(int(at.timestamp())),
        "Webhook-Signature": Webhook(secret).sign(f"msg_{JOB_ID}", at, body.decode()),
    }


def test_verify_webhook_accepts_a_signed_event() -> None:
    body = orjson.dumps({"type": "job.succeeded", "timestamp": "t", "data": {"id": JOB_ID}})
    event = verify_webhook(signed(body), body, SECRET)
    assert event["type"] == "job.succeeded" and event["data"]["id"] == JOB_ID
    assert LoraqClient.verify_webhook(signed(body), body.decode(), SECRET) == event
    assert AsyncLoraqClient.verify_webhook(signed(body), body, SECRET) == event


def test_verify_webhook_rejects() -> None:
    body = orjson.dumps({"type": "job.failed", "data": {"id": JOB_ID}})
    other = "whsec_" + base64.b64encode(b"another secret of 32 bytes......").decode()
    tampered = body.replace(b"failed", b"succeeded")
    stale = signed(body, at=datetime.now(UTC) - timedelta(minutes=10))
    cases = [
        (signed(body), tampered),
        (signed(body, secret=other), body),
        (stale, body),
        ({}, body),
        ({**signed(body), "Webhook-Signature": "garbage"}, body),
        (signed(b"[1, 2]"), b"[1, 2]"),
    ]
    for headers, payload in cases:
        with pytest.raises(WebhookVerificationError) as caught:
            verify_webhook(headers, payload, SECRET)
        assert caught.value.code == "WEBHOOK_INVALID"


# -- CLI helpers ---------------------------------------------------------------------------------


def test_cli_reads_one_text_per_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("first\r\n\n  \nform\x0cfeed\nlast"))
    assert _read_lines("-") == [(0, "first"), (3, "form\x0cfeed"), (4, "last")]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_redraws_only_on_a_terminal() -> None:
    for stream, redraws in ((Terminal(), True), (io.StringIO(), False)):
        progress = _Progress(texts=5, jobs=2, stream=stream)
        progress.job_done(3)
        progress.job_done(2)
        progress.finish()
        out = stream.getvalue()
        assert ("\r" in out) is redraws
        assert out.endswith("\n") and "encoded 5/5 texts (2/2 jobs) in " in out
        assert out.count("\n") == 1


def test_cli_takes_commands_from_entry_points_and_skips_broken_ones(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    group = cli.COMMANDS_GROUP
    found = [
        EntryPoint("server", "loraq.cli:add_server_commands", group),
        EntryPoint("broken", "no_such_module:add_commands", group),
    ]
    monkeypatch.setattr(
        cli, "entry_points", lambda group: found if group == cli.COMMANDS_GROUP else []
    )
    args = cli.build_parser().parse_args(["keys", "create", "--tenant", "acme"])
    assert args.tenant == "acme"
    assert "skipping the commands of no_such_module:add_commands" in capsys.readouterr().err
    # Given explicitly (`python -m loraq.cli`), the installed ones are not looked up.
    with pytest.raises(SystemExit):
        cli.build_parser(extensions=[]).parse_args(["gateway"])


# -- JSON without orjson -------------------------------------------------------------------------


@pytest.fixture
def stdlib_json(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """A second copy of `loraq_client._json`, loaded as if orjson were not installed (a plain
    `pip install loraq-client`); the copy the client uses is left alone."""
    monkeypatch.setitem(sys.modules, "orjson", None)  # `import orjson` now fails
    spec = importlib.util.find_spec("loraq_client._json")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert not hasattr(module, "orjson")
    return module


def test_json_without_orjson_writes_what_orjson_writes(stdlib_json: ModuleType) -> None:
    rows = np.random.default_rng(0).standard_normal((3, 384)).astype(np.float32)
    rows[2, :8] = [0.1, 1e-7, 1e20, -0.0, 123456789.0, 3.4028235e38, np.nan, np.inf]
    for index, row in enumerate(rows):
        line = {"index": index, "text": 'caf\u00e9 \u2028 \x01 "q"', "dense": row}
        ours = stdlib_json.dumps(line)
        theirs = orjson.dumps(line, option=orjson.OPT_SERIALIZE_NUMPY)
        # The same bytes up to the floats, whose exponents the two spell differently (1e-07,
        # 1e-7), and the same values: each the shortest decimal of its float32.
        assert ours.split(b',"dense":')[0] == theirs.split(b',"dense":')[0]
        assert json.loads(ours) == json.loads(theirs)
    assert json.loads(stdlib_json.dumps({"dense": rows[2]}))["dense"][:8] == [
        0.1, 1e-7, 1e20, -0.0, 123456790.0, 3.4028235e38, None, None,
    ]  # fmt: skip
    body = {"model": "m", "items": [{"text": "\u00e9"}], "params": {"options": {}}}
    assert stdlib_json.dumps(body) == orjson.dumps(body)


@pytest.mark.parametrize("data", [b"\xff", b"NaN", b'{"a": Infinity}', b"{", b"[" * 100_000])
def test_json_without_orjson_refuses_what_orjson_refuses(
    stdlib_json: ModuleType, data: bytes
) -> None:
    def refuses(loads: Callable[[bytes], Any]) -> bool:
        """ValueError is the contract: the client catches exactly that."""
        try:
            loads(data)
        except ValueError:
            return True
        return False

    assert refuses(orjson.loads) and refuses(stdlib_json.loads)
