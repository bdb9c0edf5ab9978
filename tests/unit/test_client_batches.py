"""The client's Files and Batches API, its batch-file helpers and `loraq batch`, without a
server: httpx.MockTransport answers, sleeps are recorded.

SDK behaviours run through both clients with test_client.py's `run` fixture (a test body is a
coroutine calling the client through `aw`), so sync and async are held to the same behaviour.
"""

from __future__ import annotations

import base64
import io
import itertools
import json
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from loraq_client import (
    APIConnectionError,
    AsyncBatch,
    Batch,
    BatchLineError,
    InvalidRequestError,
    JobTimeoutError,
    LoraqClient,
    NotFoundError,
    RateLimitError,
    batch_lines,
    cli,
    load_npy_output,
    load_parquet_output,
    read_batch_output,
)
from tests.unit import test_client as base
from tests.unit.test_client import Recorder, error, sequence

#: test_client.py's fixture: each test runs once with the sync client, once with the async one.
run = base.run
Aw = Callable[[Any], Awaitable[Any]]
Runner = Callable[..., tuple[Any, Recorder]]
FILE_ID = "file-abc123"
BATCH_ID = "batch_abc123"


def file_object(file_id: str = FILE_ID, filename: str = "input.jsonl") -> dict[str, Any]:
    return {
        "id": file_id, "object": "file", "bytes": 10, "created_at": 1, "filename": filename,
        "purpose": "batch", "status": "processed", "expires_at": None, "status_details": None,
    }  # fmt: skip


def batch_view(status: str = "validating", **fields: Any) -> dict[str, Any]:
    return {
        "id": BATCH_ID, "object": "batch", "endpoint": "/v1/embeddings", "errors": None,
        "input_file_id": FILE_ID, "completion_window": "24h", "status": status,
        "output_file_id": None, "error_file_id": None, "created_at": 1,
        "request_counts": {"total": 2, "completed": 0, "failed": 0}, "metadata": None,
        "output_format": "jsonl", "ids_file_id": None, **fields,
    }  # fmt: skip


def ok(body: Any) -> httpx.Response:
    return httpx.Response(200, json=body)


def listing(items: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    first, last = (items[0]["id"], items[-1]["id"]) if items else (None, None)
    return {
        "object": "list",
        "data": items,
        "first_id": first,
        "last_id": last,
        "has_more": has_more,
    }


def form(request: httpx.Request) -> dict[str, tuple[str | None, bytes]]:
    """A multipart body's fields: name -> (filename, value)."""
    boundary = request.headers["content-type"].split("boundary=")[1].encode()
    fields = {}
    for part in request.content.split(b"--" + boundary)[1:-1]:
        head, _, value = part.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        disposition = head.decode().split("\r\n")[0]
        name = disposition.split('name="')[1].split('"')[0]
        filename = (
            disposition.split('filename="')[1].split('"')[0]
            if "filename=" in head.decode()
            else None
        )
        fields[name] = (filename, value.removesuffix(b"\r\n"))
    return fields


async def collect(iterator: Any) -> list[Any]:
    if hasattr(iterator, "__aiter__"):
        return [item async for item in iterator]
    return list(iterator)


class SpyFile(io.BytesIO):
    """A binary file object that records how it is read; `seekable=False` acts like a pipe."""

    def __init__(self, data: bytes, seekable: bool = True) -> None:
        super().__init__(data)
        self.reads: list[int | None] = []
        self._seekable = seekable

    def read(self, size: int | None = -1) -> bytes:
        self.reads.append(size)
        return super().read(size)

    def seekable(self) -> bool:
        return self._seekable

    def seek(self, offset: int, whence: int = 0) -> int:
        if not self._seekable:
            raise io.UnsupportedOperation("seek")
        return super().seek(offset, whence)


# -- Files ---------------------------------------------------------------------------------------


def test_upload_streams_a_path_in_chunks_with_its_length(run: Runner, tmp_path: Path) -> None:
    data = b"".join(b'{"custom_id": "line-%d"}\n' % i for i in range(20_000))
    path = tmp_path / "big input.jsonl"
    path.write_bytes(data)

    async def op(c: Any, aw: Aw) -> Any:
        return await aw(c.upload_file(path))

    uploaded, seen = run(sequence(ok(file_object())), op)
    (request,) = seen.requests
    assert (request.method, request.url.path) == ("POST", "/v1/files")
    assert request.headers["content-type"].startswith("multipart/form-data; boundary=")
    # Sized from the file, not chunked: the body was never assembled in memory to count it.
    assert int(request.headers["content-length"]) == len(request.content)
    assert form(request) == {"purpose": (None, b"batch"), "file": ("big input.jsonl", data)}
    assert uploaded == file_object()


def test_upload_reads_a_file_object_in_chunks(run: Runner) -> None:
    data = bytes(range(256)) * 1024  # 256 KiB
    spy = SpyFile(data)

    async def op(c: Any, aw: Aw) -> Any:
        return await aw(c.upload_file(spy, purpose="batch", filename="named.jsonl"))

    _, seen = run(sequence(ok(file_object())), op)
    assert form(seen.requests[0])["file"] == ("named.jsonl", data)
    assert spy.reads and all(size is not None and 0 < size <= 64 * 1024 for size in spy.reads)


def test_upload_of_bytes(run: Runner) -> None:
    async def op(c: Any, aw: Aw) -> Any:
        return await aw(c.upload_file(b'{"a": 1}\n'))

    _, seen = run(sequence(ok(file_object())), op)
    assert form(seen.requests[0])["file"] == ("input.jsonl", b'{"a": 1}\n')


@pytest.mark.parametrize(("seekable", "sends"), [(True, 2), (False, 1)])
def test_an_upload_is_resent_after_a_429_only_if_it_can_seek_back(
    run: Runner, seekable: bool, sends: int
) -> None:
    data = b"x" * 100_000
    answers = sequence(error(429, "TOO_MANY_FILES", retry_after="2"), ok(file_object()))
    sent: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(form(request)["file"][1])
        return answers(request)

    async def op(c: Any, aw: Aw) -> Any:
        return await aw(c.upload_file(SpyFile(data, seekable=seekable)))

    if seekable:
        run(handler, op)
    else:
        with pytest.raises(RateLimitError):
            run(handler, op)
    assert sent == [data] * sends  # each send whole, from the start


def test_files_pages_and_the_iterator_over_all(run: Runner) -> None:
    ids = [f"file-{k}" for k in range(5)]

    def handler(request: httpx.Request) -> httpx.Response:
        size = int(request.url.params["limit"])
        after = request.url.params.get("after")
        start = ids.index(after) + 1 if after else 0
        page = [file_object(i) for i in ids[start : start + size]]
        return ok(listing(page, has_more=start + size < len(ids)))

    async def op(c: Any, aw: Aw) -> Any:
        first = await aw(c.files(purpose="batch", limit=2, order="asc"))
        everything = await collect(c.iter_files(purpose="batch", order="asc", page_size=2))
        return first, everything

    (first, everything), seen = run(handler, op)
    assert [f["id"] for f in first.data] == ids[:2]
    assert (first.has_more, first.first_id, first.last_id, first.next_after) == (
        True, "file-0", "file-1", "file-1",
    )  # fmt: skip
    assert [f["id"] for f in everything] == ids
    params = [dict(r.url.params) for r in seen.requests[1:]]
    assert params == [
        {"purpose": "batch", "limit": "2", "order": "asc"},
        {"purpose": "batch", "limit": "2", "order": "asc", "after": "file-1"},
        {"purpose": "batch", "limit": "2", "order": "asc", "after": "file-3"},
    ]


def test_an_empty_page_ends_the_iterator_whatever_it_claims(run: Runner) -> None:
    async def op(c: Any, aw: Aw) -> Any:
        return await collect(c.iter_files())

    items, seen = run(sequence(ok(listing([], has_more=True))), op)
    assert items == [] and len(seen.requests) == 1
    assert seen.requests[0].url.params == httpx.QueryParams()


def test_file_get_content_and_delete(run: Runner) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/content"):
            return httpx.Response(200, content=b"raw\nbytes\n")
        if request.method == "DELETE":
            return ok({"id": FILE_ID, "object": "file", "deleted": True})
        return ok(file_object())

    async def op(c: Any, aw: Aw) -> Any:
        got = await aw(c.file(FILE_ID))
        content = await aw(c.file_content(FILE_ID))
        deleted = await aw(c.delete_file(FILE_ID))
        return got, content, deleted

    (got, content, deleted), seen = run(handler, op)
    assert got["filename"] == "input.jsonl" and content == b"raw\nbytes\n"
    assert deleted == {"id": FILE_ID, "object": "file", "deleted": True}
    assert [(r.method, r.url.path) for r in seen.requests] == [
        ("GET", f"/v1/files/{FILE_ID}"),
        ("GET", f"/v1/files/{FILE_ID}/content"),
        ("DELETE", f"/v1/files/{FILE_ID}"),
    ]


class BrokenStream(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A body whose connection breaks after its first chunk."""

    def __iter__(self) -> Iterator[bytes]:
        yield b"partial"
        raise httpx.ReadError("connection reset")

    async def __aiter__(self) -> Any:
        yield b"partial"
        raise httpx.ReadError("connection reset")


def flaky_download(content: bytes, breaks: int) -> Callable[[httpx.Request], httpx.Response]:
    count = itertools.count()

    def handler(request: httpx.Request) -> httpx.Response:
        if next(count) < breaks:
            return httpx.Response(200, stream=BrokenStream())
        return httpx.Response(200, content=content)

    return handler


def test_download_streams_into_the_file_and_starts_over_after_a_break(
    run: Runner, tmp_path: Path
) -> None:
    content = b"line\n" * 50_000
    dest = tmp_path / "out.jsonl"

    async def op(c: Any, aw: Aw) -> Any:
        return await aw(c.download_file(FILE_ID, dest))

    got, seen = run(flaky_download(content, breaks=1), op)
    assert got == dest and dest.read_bytes() == content
    assert len(seen.requests) == 2 and len(seen.sleeps) == 1
    assert list(tmp_path.iterdir()) == [dest]


def test_a_failed_download_leaves_no_file(run: Runner, tmp_path: Path) -> None:
    dest = tmp_path / "out.jsonl"

    async def op(c: Any, aw: Aw) -> Any:
        return await aw(c.download_file(FILE_ID, dest))

    with pytest.raises(APIConnectionError):
        run(flaky_download(b"", breaks=10), op, max_retries=1)
    with pytest.raises(NotFoundError) as caught:
        run(sequence(error(404, "FILE_NOT_FOUND")), op)
    assert caught.value.code == "FILE_NOT_FOUND"
    assert list(tmp_path.iterdir()) == []


# -- Batches -------------------------------------------------------------------------------------


def test_create_batch_bodies(run: Runner) -> None:
    async def op(c: Any, aw: Aw) -> Any:
        plain = await aw(c.create_batch(FILE_ID))
        await aw(
            c.create_batch(
                FILE_ID, output_format="npy", metadata={"run": "7"}, webhook="https://h/x"
            )
        )
        await aw(c.create_batch(FILE_ID, webhook={"url": "https://h/y", "events": ["failed"]}))
        return plain

    plain, seen = run(sequence(ok(batch_view())), op)
    first, second, third = (json.loads(r.content) for r in seen.requests)
    assert all((r.method, r.url.path) == ("POST", "/v1/batches") for r in seen.requests)
    assert seen.requests[0].headers["content-type"] == "application/json"
    # Exactly OpenAI's body unless a loraq extension is asked for.
    assert first == {
        "input_file_id": FILE_ID, "endpoint": "/v1/embeddings", "completion_window": "24h",
    }  # fmt: skip
    assert second == {
        **first,
        "output_format": "npy",
        "metadata": {"run": "7"},
        "webhook": {"url": "https://h/x"},
    }
    assert third["webhook"] == {"url": "https://h/y", "events": ["failed"]}
    assert isinstance(plain, Batch | AsyncBatch)
    assert (plain.id, plain.status, plain.done, plain.ok) == (BATCH_ID, "validating", False, False)
    assert plain.request_counts == {"total": 2, "completed": 0, "failed": 0}


@pytest.mark.parametrize("what", ["create", "cancel"])
def test_create_and_cancel_are_not_resent_once_they_may_have_arrived(
    run: Runner, what: str
) -> None:
    async def op(c: Any, aw: Aw) -> Any:
        if what == "create":
            return await aw(c.create_batch(FILE_ID))
        return await aw(c.cancel_batch(BATCH_ID))

    sent: list[httpx.Request] = []

    def broken(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        raise httpx.ReadError("connection reset")

    with pytest.raises(APIConnectionError):
        run(broken, op)
    assert len(sent) == 1
    # Refused at connect, it never reached the gateway: safe to send again.
    _, seen = run(sequence(httpx.ConnectError("refused"), ok(batch_view())), op)
    assert len(seen.requests) == 2


def test_batch_errors_are_typed(run: Runner) -> None:
    async def get(c: Any, aw: Aw) -> Any:
        return await aw(c.batch(BATCH_ID))

    async def cancel(c: Any, aw: Aw) -> Any:
        return await aw(c.cancel_batch(BATCH_ID))

    async def create(c: Any, aw: Aw) -> Any:
        return await aw(c.create_batch(FILE_ID))

    with pytest.raises(NotFoundError, match="BATCH_NOT_FOUND"):
        run(sequence(error(404, "BATCH_NOT_FOUND")), get)
    with pytest.raises(InvalidRequestError, match="BATCH_NOT_CANCELLABLE"):
        run(sequence(error(409, "BATCH_NOT_CANCELLABLE")), cancel)
    # A 429 is answered before any work: resent after Retry-After, even for a create.
    _, seen = run(sequence(error(429, "TOO_MANY_BATCHES", "3"), ok(batch_view())), create)
    assert len(seen.requests) == 2 and seen.sleeps == [3.0]


def test_wait_polls_more_slowly_up_to_poll_s(run: Runner) -> None:
    statuses = ["validating", "in_progress", "in_progress", "in_progress", "finalizing"]
    done = batch_view("completed", output_file_id="file-out")
    answers = sequence(*(ok(batch_view(s)) for s in statuses), ok(done))

    async def op(c: Any, aw: Aw) -> Any:
        batch = await aw(c.create_batch(FILE_ID))
        assert await aw(batch.wait(poll_s=3)) is batch
        return batch

    batch, seen = run(answers, op)
    polls = seen.requests[1:]
    assert [(r.method, r.url.path) for r in polls] == [("GET", f"/v1/batches/{BATCH_ID}")] * 5
    assert seen.sleeps == [1.0, 2.0, 3.0, 3.0]  # the first look is immediate
    assert (batch.status, batch.done, batch.ok, batch.output_file_id) == (
        "completed", True, True, "file-out",
    )  # fmt: skip


@pytest.mark.parametrize("status", ["failed", "expired", "cancelled"])
def test_wait_returns_a_batch_that_ended_badly(run: Runner, status: str) -> None:
    async def op(c: Any, aw: Aw) -> Any:
        batch = await aw(c.batch(BATCH_ID))
        return await aw(batch.wait())

    batch, _ = run(sequence(ok(batch_view("in_progress")), ok(batch_view(status))), op)
    assert (batch.status, batch.done, batch.ok) == (status, True, False)


def test_wait_gives_up_at_its_timeout(run: Runner) -> None:
    async def op(c: Any, aw: Aw) -> Any:
        batch = await aw(c.batch(BATCH_ID))
        return await aw(batch.wait(timeout=0))

    with pytest.raises(JobTimeoutError) as caught:
        run(sequence(ok(batch_view("in_progress"))), op)
    assert caught.value.job_id == BATCH_ID and "still in_progress after 0s" in str(caught.value)

    async def bad_poll(c: Any, aw: Aw) -> Any:
        return await aw((await aw(c.batch(BATCH_ID))).wait(poll_s=0))

    with pytest.raises(ValueError, match="poll_s"):
        run(sequence(ok(batch_view("in_progress"))), bad_poll)


def test_refresh_cancel_and_list(run: Runner) -> None:
    views = [{**batch_view("in_progress"), "id": f"batch_{k}"} for k in range(3)]

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/batches":
            after = request.url.params.get("after")
            start = int(after.removeprefix("batch_")) + 1 if after else 0
            return ok(listing(views[start : start + 2], has_more=start + 2 < len(views)))
        if request.url.path.endswith("/cancel"):
            return ok(batch_view("cancelling"))
        return ok(batch_view("in_progress"))

    async def op(c: Any, aw: Aw) -> Any:
        batch = await aw(c.batch(BATCH_ID))
        await aw(batch.refresh())
        await aw(batch.cancel())
        page = await aw(c.batches(limit=2))
        everything = await collect(c.iter_batches(page_size=2))
        return batch, page, everything

    (batch, page, everything), seen = run(handler, op)
    assert batch.status == "cancelling"
    assert [(r.method, r.url.path) for r in seen.requests[:3]] == [
        ("GET", f"/v1/batches/{BATCH_ID}"),
        ("GET", f"/v1/batches/{BATCH_ID}"),
        ("POST", f"/v1/batches/{BATCH_ID}/cancel"),
    ]
    assert [b.id for b in page.data] == ["batch_0", "batch_1"] and page.has_more
    assert all(isinstance(b, Batch | AsyncBatch) for b in page.data + everything)
    assert [b.id for b in everything] == ["batch_0", "batch_1", "batch_2"]
    assert seen.requests[-1].url.params["after"] == "batch_1"


def test_download_writes_the_files_a_batch_has(run: Runner, tmp_path: Path) -> None:
    contents = {"file-out": b"\x93NUMPY...", "file-ids": b'{"custom_id":"line-0","index":0}\n'}

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=contents[request.url.path.split("/")[3]])

    npy_done = batch_view(
        "completed", output_format="npy", output_file_id="file-out", ids_file_id="file-ids"
    )

    async def op(c: Any, aw: Aw) -> Any:
        batch = (Batch if isinstance(c, LoraqClient) else AsyncBatch)(c, npy_done)
        return await aw(batch.download(tmp_path / "new" / "dir"))

    paths, _ = run(handler, op)
    where = tmp_path / "new" / "dir"
    assert paths == {
        "output": where / f"{BATCH_ID}_output.npy",
        "ids": where / f"{BATCH_ID}_ids.jsonl",
    }
    assert paths["output"].read_bytes() == contents["file-out"]
    assert paths["ids"].read_bytes() == contents["file-ids"]
    assert sorted(p.name for p in where.iterdir()) == sorted(p.name for p in paths.values())


def test_submit_batch_uploads_creates_and_waits(run: Runner, tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text("".join(batch_lines(["a", "b"], "m")))

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/files":
            return ok(file_object("file-up", "in.jsonl"))
        if request.method == "POST":
            return ok(batch_view(input_file_id=json.loads(request.content)["input_file_id"]))
        return ok(batch_view("completed"))

    async def op(c: Any, aw: Aw) -> Any:
        created = await aw(c.submit_batch(path, metadata={"k": "v"}))
        waited = await aw(c.submit_batch(path, output_format="parquet", wait=True, timeout=60))
        return created, waited

    (created, waited), seen = run(handler, op)
    assert (created.status, created.data["input_file_id"]) == ("validating", "file-up")
    assert waited.status == "completed"
    assert [(r.method, r.url.path) for r in seen.requests] == [
        ("POST", "/v1/files"),
        ("POST", "/v1/batches"),
        ("POST", "/v1/files"),
        ("POST", "/v1/batches"),
        ("GET", f"/v1/batches/{BATCH_ID}"),
    ]
    assert json.loads(seen.requests[3].content)["output_format"] == "parquet"


# -- Batch files ---------------------------------------------------------------------------------


def test_batch_lines() -> None:
    lines = list(batch_lines(["a", "b", "ç"], "base/model", lora_id="org/lora"))
    assert all(line.endswith("\n") and line.count("\n") == 1 for line in lines)
    assert [json.loads(line) for line in lines] == [
        {
            "custom_id": f"line-{k}",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": "base/model", "input": text, "lora_id": "org/lora"},
        }
        for k, text in enumerate(["a", "b", "ç"])
    ]
    grouped = [json.loads(line) for line in batch_lines(iter("abcde"), "m", None, "q", 2)]
    assert [(g["custom_id"], g["body"]) for g in grouped] == [
        ("q0", {"model": "m", "input": ["a", "b"]}),
        ("q1", {"model": "m", "input": ["c", "d"]}),
        ("q2", {"model": "m", "input": ["e"]}),
    ]
    assert list(batch_lines([], "m")) == []
    with pytest.raises(TypeError, match="not a single text"):
        list(batch_lines("abc", "m"))
    with pytest.raises(TypeError, match="text 1"):
        list(batch_lines(["a", 2], "m"))  # type: ignore[list-item]
    with pytest.raises(ValueError, match="texts_per_line"):
        list(batch_lines(["a"], "m", texts_per_line=0))


def output_line(custom_id: str, rows: list[list[float]], b64: bool = False) -> dict[str, Any]:
    embeddings: list[Any] = rows
    if b64:
        embeddings = [base64.b64encode(np.asarray(r, "<f4").tobytes()).decode() for r in rows]
    data = [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(embeddings)]
    body = {"object": "list", "data": data[::-1], "model": "m", "usage": {}}  # any order
    response = {"status_code": 200, "request_id": "r", "body": body}
    return {"id": "batch_req_1", "custom_id": custom_id, "response": response, "error": None}


def test_read_batch_output(tmp_path: Path) -> None:
    records = [
        output_line("line-0", [[0.5, -1.0], [0.25, 2.0]]),
        output_line("line-1", [[0.1, 0.2]], b64=True),
        {"id": "r", "custom_id": "line-2", "response": None,
         "error": {"code": "INPUT_TOO_LONG", "message": "too long"}},
        {"id": "r", "custom_id": None, "response": None,
         "error": {"code": "INVALID_INPUT", "message": "not JSON"}},
        {"id": "r", "custom_id": "line-4", "error": None, "response": {
            "status_code": 400, "request_id": "r",
            "body": {"error": {"code": "MODEL_NOT_FOUND", "message": "no"}}}},
    ]  # fmt: skip
    raw = b"".join(json.dumps(r).encode() + b"\n" for r in records) + b"\n"
    path = tmp_path / "out.jsonl"
    path.write_bytes(raw)
    for source in (raw, path, str(path)):
        results = list(read_batch_output(source))
        assert [custom_id for custom_id, _ in results] == [
            "line-0", "line-1", "line-2", None, "line-4",
        ]  # fmt: skip
        first, second = results[0][1], results[1][1]
        assert isinstance(first, np.ndarray) and first.dtype == np.float32
        np.testing.assert_array_equal(first, np.array([[0.5, -1.0], [0.25, 2.0]], np.float32))
        assert isinstance(second, np.ndarray) and second.shape == (1, 2)
        np.testing.assert_array_equal(second, np.array([[0.1, 0.2]], np.float32))
        assert [r for _, r in results[2:]] == [
            BatchLineError("INPUT_TOO_LONG", "too long"),
            BatchLineError("INVALID_INPUT", "not JSON"),
            BatchLineError("MODEL_NOT_FOUND", "no"),
        ]
    with pytest.raises(ValueError, match="line 1 is unreadable"):
        list(read_batch_output(raw.split(b"\n")[0] + b"\n{not json\n"))


def test_load_npy_output(tmp_path: Path) -> None:
    matrix = np.arange(6, dtype=np.float32).reshape(3, 2)
    buffer = io.BytesIO()
    np.save(buffer, matrix)
    ids = b'{"custom_id":"a","index":0}\n{"custom_id":"a","index":1}\n"b"\n'
    (tmp_path / "out.npy").write_bytes(buffer.getvalue())
    (tmp_path / "ids.jsonl").write_bytes(ids)
    for npy, id_source in (
        (buffer.getvalue(), ids),
        (tmp_path / "out.npy", tmp_path / "ids.jsonl"),
    ):
        custom_ids, vectors = load_npy_output(npy, id_source)
        assert custom_ids == ["a", "a", "b"]
        np.testing.assert_array_equal(vectors, matrix)
    with pytest.raises(ValueError, match="2 custom ids for 3 rows"):
        load_npy_output(buffer.getvalue(), b'"a"\n"b"\n')


def test_load_parquet_output(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    matrix = np.arange(8, dtype=np.float32).reshape(4, 2) / 3
    schema = pa.schema(
        [
            ("custom_id", pa.string()),
            ("index", pa.int32()),
            ("embedding", pa.list_(pa.float32(), 2)),
        ]
    )
    table = pa.table(
        {"custom_id": ["a", "a", "b", "c"], "index": [0, 1, 0, 0], "embedding": list(matrix)},
        schema=schema,
    )
    path = tmp_path / "out.parquet"
    pq.write_table(table, path, row_group_size=3)  # two row groups: chunked columns
    for source in (path, path.read_bytes()):
        custom_ids, vectors = load_parquet_output(source)
        assert custom_ids == ["a", "a", "b", "c"]
        assert vectors.dtype == np.float32
        np.testing.assert_array_equal(vectors, matrix)


def test_load_parquet_output_without_pyarrow(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(ImportError, match="pip install pyarrow"):
        load_parquet_output(b"PAR1")


# -- loraq batch ---------------------------------------------------------------------------------


class Gateway:
    """The files and batches routes, faked: uploads are kept, and each GET of a batch moves it
    one step along `statuses`, ending with its output and error files."""

    def __init__(self, statuses: tuple[str, ...] = ("in_progress", "completed")) -> None:
        self.statuses = statuses
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path, method = request.url.path, request.method
        if (method, path) == ("POST", "/v1/files"):
            filename, data = form(request)["file"]
            file_id = f"file-{len(self.files)}"
            self.files[file_id] = data
            return ok(file_object(file_id, filename or ""))
        if path.startswith("/v1/files/"):
            return httpx.Response(200, content=self.files[path.split("/")[3]])
        if (method, path) == ("POST", "/v1/batches"):
            body = json.loads(request.content)
            view = batch_view(
                input_file_id=body["input_file_id"],
                metadata=body.get("metadata"),
                output_format=body.get("output_format", "jsonl"),
                id=f"batch_{len(self.batches)}",
            )
            self.batches[view["id"]] = view
            return ok(view)
        if path == "/v1/batches":
            views = list(self.batches.values())[::-1]
            after = request.url.params.get("after")
            start = [v["id"] for v in views].index(after) + 1 if after else 0
            size = int(request.url.params["limit"])
            return ok(listing(views[start : start + size], start + size < len(views)))
        view = self.batches.get(path.split("/")[3])
        if view is None:
            return error(404, "BATCH_NOT_FOUND")
        if path.endswith("/cancel"):
            view["status"] = "cancelled"
        elif view["status"] not in ("completed", "failed", "expired", "cancelled"):
            step = ("validating", *self.statuses).index(view["status"])
            view["status"] = self.statuses[min(step, len(self.statuses) - 1)]
            if view["status"] == "completed":
                self.files["file-out"] = b'{"custom_id":"line-0"}\n'
                self.files["file-err"] = b'{"custom_id":"line-1"}\n'
                view.update(output_file_id="file-out", error_file_id="file-err")
        return ok(view)


@pytest.fixture
def gateway(monkeypatch: pytest.MonkeyPatch) -> Gateway:
    """`loraq` commands talk to a fresh fake gateway; their sleeps return at once."""
    fake = Gateway()

    def client(args: Any) -> LoraqClient:
        http = httpx.Client(transport=httpx.MockTransport(fake))
        return LoraqClient(args.url, api_key=args.api_key, http_client=http, sleep=lambda s: None)

    monkeypatch.setattr(cli, "_client", client)
    return fake


def loraq(*argv: str) -> int:
    return cli.main(list(argv), extensions=[])


def stdin_bytes(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))


def test_cli_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    texts = tmp_path / "texts.txt"
    texts.write_text("first\n\n  \nsecond ü\nthird", encoding="utf-8")
    assert loraq("batch", "lines", "--model", "m", "--lora-id", "o/l", "--file", str(texts)) == 0
    lines = capsysbinary.readouterr().out.decode().splitlines(keepends=True)
    assert lines == list(batch_lines(["first", "second ü", "third"], "m", "o/l"))

    stdin_bytes(monkeypatch, b"a\nb\nc\n")
    argv = ["batch", "lines", "--model", "m", "--prefix", "t", "--texts-per-line", "2"]
    assert loraq(*argv) == 0
    out = capsysbinary.readouterr().out.decode()
    assert [json.loads(line)["custom_id"] for line in out.splitlines()] == ["t0", "t1"]

    assert loraq("batch", "lines", "--model", "m", "--file", str(tmp_path / "missing")) == 1
    assert "No such file" in capsysbinary.readouterr().err.decode()


def test_cli_submit_prints_the_batch_id(
    gateway: Gateway, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text("".join(batch_lines(["a"], "m")))
    argv = ["--output-format", "npy", "--metadata", "a=b=c", "--metadata", "run=1"]
    assert loraq("batch", "submit", str(path), *argv) == 0
    assert capsys.readouterr().out == "batch_0\n"
    assert gateway.files["file-0"] == path.read_bytes()
    assert json.loads(gateway.requests[1].content) == {
        "input_file_id": "file-0", "endpoint": "/v1/embeddings", "completion_window": "24h",
        "metadata": {"a": "b=c", "run": "1"}, "output_format": "npy",
    }  # fmt: skip


def test_cli_submit_from_stdin_and_wait(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data = "".join(batch_lines(["a", "b"], "m")).encode()
    stdin_bytes(monkeypatch, data)
    assert loraq("batch", "submit", "--wait", "--poll", "0.5") == 0
    out, err = capsys.readouterr()
    final = json.loads(out)
    assert (final["id"], final["status"], final["output_file_id"]) == (
        "batch_0", "completed", "file-out",
    )  # fmt: skip
    assert "batch_0 created, waiting" in err
    assert gateway.files["file-0"] == data
    # Spooled to a file first, so the upload had a length (and could be resent).
    assert "content-length" in gateway.requests[0].headers


@pytest.mark.parametrize(
    ("statuses", "timeout", "code", "says"),
    [
        (("in_progress", "failed"), None, 1, "ended failed"),
        (("in_progress", "expired"), None, 1, "ended expired"),
        (("in_progress",), "0", 124, "JOB_TIMEOUT: batch batch_0 is still in_progress"),
    ],
)
def test_cli_submit_wait_exit_codes(
    gateway: Gateway,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    statuses: tuple[str, ...],
    timeout: str | None,
    code: int,
    says: str,
) -> None:
    gateway.statuses = statuses
    path = tmp_path / "in.jsonl"
    path.write_text("".join(batch_lines(["a"], "m")))
    argv = ["batch", "submit", str(path), "--wait", *(["--timeout", timeout] if timeout else [])]
    assert loraq(*argv) == code
    assert says in capsys.readouterr().err


def test_cli_status_cancel_download_list(
    gateway: Gateway, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text("".join(batch_lines(["a"], "m")))
    for _ in range(3):
        assert loraq("batch", "submit", str(path)) == 0
    capsys.readouterr()

    assert loraq("batch", "download", "batch_0", "--dir", str(tmp_path / "out")) == 1
    assert "batch batch_0 has no files (it is in_progress)" in capsys.readouterr().err
    assert loraq("batch", "status", "batch_0") == 0
    assert json.loads(capsys.readouterr().out)["status"] == "completed"
    assert loraq("batch", "download", "batch_0", "--dir", str(tmp_path / "out")) == 0
    printed = capsys.readouterr().out.splitlines()
    assert [Path(p).name for p in printed] == ["batch_0_output.jsonl", "batch_0_errors.jsonl"]
    assert Path(printed[0]).read_bytes() == gateway.files["file-out"]

    assert loraq("batch", "cancel", "batch_1") == 0
    assert json.loads(capsys.readouterr().out)["status"] == "cancelled"
    assert loraq("batch", "status", "batch_9") == 1
    assert "loraq: BATCH_NOT_FOUND (HTTP 404)" in capsys.readouterr().err

    assert loraq("batch", "list", "--limit", "2") == 0
    listed = [json.loads(line)["id"] for line in capsys.readouterr().out.splitlines()]
    assert listed == ["batch_2", "batch_1"]
    assert loraq("batch", "list") == 0
    assert len(capsys.readouterr().out.splitlines()) == 3


@pytest.mark.parametrize(
    "argv",
    [
        ["batch", "submit", "f", "--metadata", "novalue"],
        ["batch", "submit", "f", "--output-format", "csv"],
        ["batch", "submit", "f", "--wait", "--poll", "0"],
        ["batch", "lines"],
        ["batch", "list", "--limit", "0"],
        ["batch"],
    ],
)
def test_cli_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        loraq(*argv)
    assert exited.value.code == 2
