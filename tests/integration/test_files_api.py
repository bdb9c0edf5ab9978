"""The Files API (`api/routes/files.py`) through the official `openai` client and raw HTTP, on a
real socket and a real Redis, with API keys on.

Two gateways serve the module: `small` (in this process; a 1 MiB file limit and a cap of
`CAP` files per tenant) for the refusals, tenancy and paging, and `large` (a process of its
own, so its peak memory can be read from /proc) for a file bigger than any buffer: it must
stream through in flat memory while the gateway keeps answering. Each test uses tenants of its
own, so the tests share the gateways and Redis without meeting.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
import redis
import redis.asyncio as aioredis

from api.files import FileRecords, new_file_id
from api.main import create_app
from common import keys
from common.object_store import LocalObjectStore
from common.settings import BulkSettings
from loraq.stack import Stack, wait_until
from tests.asgi_server import serve
from tests.constants import FAKE_MODEL
from tests.integration.gateway_app import ROUTING, Keys, code, settings

MiB = 1024 * 1024
SMALL_LIMIT = MiB
LARGE_LIMIT = 80 * MiB
CAP = 5
TENANTS = (
    "trip", "alice", "bob", "pager", "outputs", "capped", "sizes", "forms", "large", "gone",
    "stays",
)  # fmt: skip
BOUNDARY = "loraq-test-boundary"
FORM = f"multipart/form-data; boundary={BOUNDARY}"


@dataclass
class Served:
    url: str
    keys: Keys
    store: Path
    bulk: BulkSettings
    redis_url: str
    pid: int | None = None

    def http(self, tenant: str) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.keys.headers(tenant), timeout=120)

    def openai(self, tenant: str) -> openai.OpenAI:
        key = self.keys.headers(tenant)["authorization"].removeprefix("Bearer ")
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0)

    def stored(self) -> list[str]:
        """Every file in the store, temporary parts included."""
        return sorted(str(p.relative_to(self.store)) for p in self.store.rglob("*") if p.is_file())


def key_entries(api_keys: Keys) -> list[dict[str, object]]:
    return [api_keys.entry(t, rate_per_s=1000, burst=1000) for t in TENANTS]


@pytest.fixture(scope="module")
def small(module_redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("files-small")
    bulk = BulkSettings(
        store=str(root / "store"),
        max_file_bytes=SMALL_LIMIT,
        max_files_per_tenant=CAP,
        file_sweep_s=0.2,
    )
    api_keys = Keys()
    s = settings(module_redis_url, root, key_entries(api_keys), bulk=bulk)
    with serve(create_app(s)) as url:
        yield Served(url, api_keys, root / "store", bulk, module_redis_url)


@pytest.fixture(scope="module")
def large(module_redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("files-large")
    (root / "adapters").mkdir()
    bulk = BulkSettings(store=str(root / "store"), max_file_bytes=LARGE_LIMIT)
    api_keys = Keys()
    env = {
        "LORAQ_REDIS_URL": module_redis_url,
        "LORAQ_MODELS": json.dumps({FAKE_MODEL: str(root)}),
        "LORAQ_ADAPTERS__DIR": str(root / "adapters"),
        "LORAQ_ROUTING": json.dumps(ROUTING),
        "LORAQ_AUTH__KEYS": json.dumps(key_entries(api_keys)),
        "LORAQ_BULK": bulk.model_dump_json(),
    }
    stack = Stack(env=env, log_dir=root / "logs")
    try:
        gateway = stack.start_gateway()
        yield Served(stack.url, api_keys, root / "store", bulk, module_redis_url, gateway.popen.pid)
    finally:
        stack.stop()


def jsonl(path: Path, size: int) -> bytes:
    """Distinct JSON lines of about `size` bytes, written to `path`."""
    lines, total = [], 0
    while total < size:
        text = hashlib.sha256(str(len(lines)).encode()).hexdigest() * 4
        lines.append(json.dumps({"custom_id": f"r{len(lines)}", "body": {"input": text}}) + "\n")
        total += len(lines[-1])
    data = "".join(lines).encode()
    path.write_bytes(data)
    return data


def part_head(name: str, filename: str | None) -> bytes:
    disposition = f'form-data; name="{name}"'
    if filename is not None:
        disposition += f'; filename="{filename}"'
    return f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()


def form(*parts: tuple[str, str | None, bytes], close: bool = True) -> bytes:
    """A multipart body by hand: (name, filename or None, bytes) per part."""
    body = b"".join(part_head(name, filename) + data + b"\r\n" for name, filename, data in parts)
    return body + (f"--{BOUNDARY}--\r\n".encode() if close else b"")


def upload(client: httpx.Client, data: bytes, name: str = "in.jsonl") -> httpx.Response:
    return client.post("/v1/files", files={"file": (name, data)}, data={"purpose": "batch"})


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc status")


def test_a_file_round_trips_through_the_official_client(small: Served, tmp_path: Path) -> None:
    path = tmp_path / "requests.jsonl"
    data = jsonl(path, SMALL_LIMIT - 4096)
    client = small.openai("trip")
    with path.open("rb") as stream:
        created = client.files.create(file=stream, purpose="batch")
    assert created.id.startswith("file-") and created.object == "file"
    assert (created.bytes, created.filename, created.purpose) == (len(data), path.name, "batch")
    assert created.status == "processed"
    assert created.expires_at == created.created_at + small.bulk.retention_s
    assert client.files.retrieve(created.id) == created
    assert [f.id for f in client.files.list()] == [created.id]
    assert client.files.content(created.id).read() == data
    with small.http("trip") as http:
        head = http.get(f"/v1/files/{created.id}/content")
    assert head.headers["content-type"] == "application/jsonl"
    assert head.headers["content-length"] == str(len(data))
    assert (small.store / "files" / created.id).read_bytes() == data

    deleted = client.files.delete(created.id)
    assert (deleted.id, deleted.object, deleted.deleted) == (created.id, "file", True)
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(created.id)
    assert not (small.store / "files" / created.id).exists()
    assert list(client.files.list()) == []


def test_filenames_keep_only_their_last_part(small: Served) -> None:
    with small.http("trip") as http:
        for sent, kept in (("../../etc/pass\x01wd", "passwd"), ("C:\\dir\\a.jsonl", "a.jsonl"),
                           ("..", "file"), ("", "file")):  # fmt: skip
            body = form(("purpose", None, b"batch"), ("file", sent, b"{}\n"))
            made = http.post("/v1/files", content=body, headers={"content-type": FORM}).json()
            assert made["filename"] == kept, sent
        assert http.get(f"/v1/files/{made['id']}/content").headers["content-type"] == (
            "application/octet-stream"
        )
        assert upload(http, b"{}\n", name="x" * 1000).json()["filename"] == "x" * 255
        for f in http.get("/v1/files").json()["data"]:
            assert http.delete(f"/v1/files/{f['id']}").status_code == 200


def test_tenants_never_see_each_others_files(small: Served) -> None:
    alice, bob = small.http("alice"), small.http("bob")
    with alice, bob:
        mine = upload(alice, b'{"a": 1}\n').json()["id"]
        missing = new_file_id()
        for method, suffix in (("GET", ""), ("GET", "/content"), ("DELETE", "")):
            theirs = bob.request(method, f"/v1/files/{mine}{suffix}")
            nothing = bob.request(method, f"/v1/files/{missing}{suffix}")
            assert code(theirs) == code(nothing) == (404, "FILE_NOT_FOUND")
            assert (
                theirs.json()["error"]["message"].replace(mine, missing)
                == (nothing.json()["error"]["message"])
            )
        assert code(bob.get("/v1/files/not-an-id")) == (404, "FILE_NOT_FOUND")
        assert bob.get("/v1/files").json()["data"] == []
        assert alice.get(f"/v1/files/{mine}/content").content == b'{"a": 1}\n'
        assert code(httpx.get(f"{small.url}/v1/files/{mine}")) == (401, "UNAUTHORIZED")


def test_lists_page_by_cursor_in_either_order(small: Served) -> None:
    client = small.openai("pager")
    with small.http("pager") as http:
        ids = [upload(http, b"{}\n", name=f"{i}.jsonl").json()["id"] for i in range(CAP)]
    ids.sort()  # by creation time (ids of one millisecond by their random part)
    newest_first = ids[::-1]
    first = client.files.list(limit=2)
    assert [f.id for f in first.data] == newest_first[:2] and first.has_more
    assert [f.id for f in client.files.list(limit=2)] == newest_first  # the client pages on
    assert [f.id for f in client.files.list(limit=2, order="asc")] == ids
    assert [f.id for f in client.files.list(order="asc", after=ids[1])] == ids[2:]
    assert client.files.list(after=ids[0]).data == []

    client.files.delete(ids[2])  # a cursor deleted meanwhile still says where it stands
    assert [f.id for f in client.files.list(after=ids[2])] == ids[:2][::-1]
    with small.http("pager") as http:
        whole = http.get("/v1/files", params={"limit": CAP}).json()
        assert (whole["first_id"], whole["last_id"], whole["has_more"]) == (ids[-1], ids[0], False)
        for query in ({"limit": 0}, {"limit": 10_001}, {"order": "up"}, {"after": "file-x"},
                      {"purpose": "fine-tune"}):  # fmt: skip
            assert code(http.get("/v1/files", params=query)) == (422, "INVALID_INPUT"), query


def test_the_sweep_deletes_expired_files_of_tenants_that_never_come_back(small: Served) -> None:
    """A tenant that never lists or uploads again still loses its files at retention's end:
    the gateway's batch runner sweeps every tenant's expired files from one index (every
    `file_sweep_s`). Another tenant's live file stays, and a file whose record is gone loses
    its bytes all the same."""
    with small.http("gone") as gone, small.http("stays") as stays:
        old = upload(gone, b'{"a": 1}\n').json()["id"]
        kept = upload(stays, b'{"b": 1}\n').json()["id"]
    r = redis.Redis.from_url(small.redis_url)
    assert {old, kept} <= {m.decode() for m in r.zrange(keys.EXPIRING_FILES, 0, -1)}
    orphan = new_file_id()  # bytes and index member, its record past the grace
    with LocalObjectStore(small.store).open_write(f"files/{orphan}") as out:
        out.write(b"orphan")
    past = int(time.time()) - 1
    r.hset(keys.file(old), "expires_at", past)
    r.zadd(keys.EXPIRING_FILES, {old: past, orphan: past - 100})

    def swept() -> bool:
        return (
            r.zscore(keys.EXPIRING_FILES, old) is None
            and r.zscore(keys.EXPIRING_FILES, orphan) is None
        )

    wait_until(swept, 60, "the gateway's sweep of expired files")
    assert not (small.store / "files" / old).exists()
    assert not (small.store / "files" / orphan).exists()
    assert not r.exists(keys.file(old)) and r.zcard(keys.tenant_files("gone")) == 0
    assert (small.store / "files" / kept).exists()
    assert [f.id for f in small.openai("stays").files.list()] == [kept]
    small.openai("stays").files.delete(kept)
    assert r.zscore(keys.EXPIRING_FILES, kept) is None


def test_batch_outputs_are_registered_listed_and_expire(small: Served) -> None:
    """What a batch does with its results: writes them to the store, then `register`s them."""
    with small.http("outputs") as http:
        upload(http, b'{"in": 1}\n')

    async def produce() -> list[str]:
        client = aioredis.Redis.from_url(small.redis_url)
        records = FileRecords(client, LocalObjectStore(small.store), small.bulk)
        made = []
        for name in ("output.jsonl", "errors.jsonl"):
            with LocalObjectStore(small.store).open_write(f"outputs/b1/{name}") as out:
                out.write(b'{"out": 1}\n')
            made.append((await records.register("outputs", name, "batch_output",
                                                f"outputs/b1/{name}", 11)).id)  # fmt: skip
        await client.aclose()
        return made

    outputs = asyncio.run(produce())
    client = small.openai("outputs")
    assert {f.id for f in client.files.list(purpose="batch_output")} == set(outputs)
    (upload_id,) = [f.id for f in client.files.list(purpose="batch")]
    assert client.files.content(outputs[0]).read() == b'{"out": 1}\n'
    client.files.delete(outputs[0])
    assert not (small.store / "outputs/b1/output.jsonl").exists()

    # Past its retention a file is gone: 404, out of lists, its bytes deleted.
    r = redis.Redis.from_url(small.redis_url)
    r.hset(keys.file(outputs[1]), "expires_at", int(time.time()) - 1)
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(outputs[1])
    assert [f.id for f in client.files.list()] == [upload_id]
    assert not (small.store / "outputs/b1/errors.jsonl").exists()
    assert not r.exists(keys.file(outputs[1]))
    assert r.zrange(keys.tenant_files("outputs"), 0, -1) == [upload_id.encode()]


def test_a_tenant_at_its_cap_is_refused_until_it_deletes(small: Served) -> None:
    with small.http("capped") as http:
        ids = [upload(http, b"{}\n").json()["id"] for _ in range(CAP)]
        before = small.stored()
        refused = upload(http, b"{}\n")
        assert code(refused) == (429, "TOO_MANY_FILES") and "Retry-After" in refused.headers
        assert small.stored() == before
        http.delete(f"/v1/files/{ids[0]}")
        assert upload(http, b"{}\n").status_code == 200


def test_a_file_over_the_limit_is_refused_and_nothing_is_stored(small: Served) -> None:
    over = b"x" * (SMALL_LIMIT + 1)

    def chunked() -> Iterator[bytes]:  # no Content-Length: the limit holds as bytes arrive
        yield form(("purpose", None, b"batch"), close=False)
        yield part_head("file", "a")
        for _ in range(4):
            yield b"y" * SMALL_LIMIT
        yield f"\r\n--{BOUNDARY}--\r\n".encode()

    before = small.stored()
    with small.http("sizes") as http:
        declared = http.post("/v1/files", content=form(("purpose", None, b"batch"),
                             ("file", "a", over * 2)), headers={"content-type": FORM})  # fmt: skip
        within_body = upload(http, over)  # the body is within its limit, the file is not
        streamed = http.post("/v1/files", content=chunked(), headers={"content-type": FORM})
        for answer in (declared, within_body, streamed):
            assert code(answer) == (413, "FILE_TOO_LARGE")
            assert str(SMALL_LIMIT) in answer.json()["error"]["message"]
        assert http.get("/v1/files").json()["data"] == []
        assert upload(http, over[:SMALL_LIMIT]).json()["bytes"] == SMALL_LIMIT
    assert len(small.stored()) == len(before) + 1


BAD_FORMS = [
    ("not multipart", b'{"purpose": "batch"}', "application/json", 415, "UNSUPPORTED_MEDIA_TYPE"),
    ("no content type", form(("purpose", None, b"batch")), "", 415, "UNSUPPORTED_MEDIA_TYPE"),
    ("no boundary", form(("purpose", None, b"batch")), "multipart/form-data", 422, "INVALID_INPUT"),
    ("no file", form(("purpose", None, b"batch")), FORM, 422, "INVALID_INPUT"),
    ("no purpose", form(("file", "a.jsonl", b"{}")), FORM, 422, "INVALID_INPUT"),
    ("wrong purpose", form(("purpose", None, b"fine-tune"), ("file", "a", b"{}")), FORM, 422,
     "INVALID_INPUT"),
    ("purpose after the file", form(("file", "a", b"{}"), ("purpose", None, b"assistants")), FORM,
     422, "INVALID_INPUT"),
    ("two files", form(("purpose", None, b"batch"), ("file", "a", b"{}"), ("file", "b", b"{}")),
     FORM, 422, "INVALID_INPUT"),
    ("two purposes", form(("purpose", None, b"batch"), ("purpose", None, b"batch"),
     ("file", "a", b"{}")), FORM, 422, "INVALID_INPUT"),
    ("unknown field", form(("purpose", None, b"batch"), ("file", "a", b"{}"),
     ("expires_after", None, b"1")), FORM, 422, "INVALID_INPUT"),
    ("huge purpose", form(("purpose", None, b"b" * 5000), ("file", "a", b"{}")), FORM, 422,
     "INVALID_INPUT"),
    ("purpose not utf-8", form(("purpose", None, b"\xff"), ("file", "a", b"{}")), FORM, 422,
     "INVALID_INPUT"),
    ("cut off", form(("purpose", None, b"batch"), ("file", "a", b"{}"), close=False), FORM, 422,
     "INVALID_INPUT"),
    ("not a form", b"garbage" * 100, FORM, 422, "INVALID_INPUT"),
    ("no disposition", f"--{BOUNDARY}\r\nX-A: b\r\n\r\nz\r\n--{BOUNDARY}--\r\n".encode(), FORM,
     422, "INVALID_INPUT"),
    ("too many parts", form(*[("purpose", None, b"batch")] * 9), FORM, 422, "INVALID_INPUT"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "body", "content_type", "status", "error"), BAD_FORMS)
def test_bad_forms_get_their_own_error_and_leave_nothing(
    small: Served, case: str, body: bytes, content_type: str, status: int, error: str
) -> None:
    before = small.stored()
    with small.http("forms") as http:
        answer = http.post("/v1/files", content=body, headers={"content-type": content_type})
        assert code(answer) == (status, error), case
        assert answer.json()["error"]["message"]
        assert http.get("/v1/files").json()["data"] == []
    assert small.stored() == before


def test_a_large_upload_streams_in_flat_memory_and_leaves_the_gateway_free(
    large: Served, tmp_path: Path
) -> None:
    assert large.pid is not None
    size = 64 * MiB
    path = tmp_path / "large.jsonl"
    data = jsonl(path, size)
    with large.http("large") as http:
        warm = upload(http, b"{}\n").json()["id"]  # a first upload starts the thread pool
        http.get(f"/v1/files/{warm}/content")
        before = peak_rss(large.pid)
        answers: list[httpx.Response] = []

        def send() -> None:
            with large.http("large") as own, path.open("rb") as stream:
                answers.append(own.post("/v1/files", files={"file": stream},
                                        data={"purpose": "batch"}))  # fmt: skip

        sender = threading.Thread(target=send)
        sender.start()
        waits = []
        while sender.is_alive():
            started = time.monotonic()
            assert http.get("/healthz").status_code == 200
            waits.append(time.monotonic() - started)
        sender.join()
        (made,) = answers
        assert made.status_code == 200, made.text
        assert made.json()["bytes"] == len(data)
        uploaded = peak_rss(large.pid) - before

        digest = hashlib.sha256()
        with http.stream("GET", f"/v1/files/{made.json()['id']}/content") as body:
            for chunk in body.iter_bytes():
                digest.update(chunk)
        downloaded = peak_rss(large.pid) - before
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest()
    assert uploaded < 16 * MiB and downloaded < 16 * MiB, (uploaded, downloaded)
    assert len(waits) >= 3 and max(waits) < 0.5, waits


def test_a_file_over_the_limit_is_refused_before_it_is_sent(large: Served, tmp_path: Path) -> None:
    path = tmp_path / "huge.jsonl"
    with path.open("wb") as stream:
        stream.truncate(LARGE_LIMIT + MiB)  # sparse: no disk, no time
    before = large.stored()
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as refused, path.open("rb") as stream:
        large.openai("large").files.create(file=stream, purpose="batch")
    assert refused.value.status_code == 413
    assert time.monotonic() - started < 5
    assert large.stored() == before
