"""Bodies built to freeze or exhaust the gateway, sent to a real gateway (uvicorn) with the
default limits (16 MiB, 1024 items), all at once, on every route that parses a body.

Each must get its clear error (413 `BODY_TOO_LARGE`), `/healthz` must keep answering meanwhile,
and the gateway must not grow by anything like what the bodies would decode into (before the
fix: a 1 MiB msgpack body of nil items held the event loop 6.5 s and grew the process by 1.6 GB;
16 MiB got it OOM-killed). No worker runs: none of these requests gets as far as a job, but the
gateway is a process of its own, so that its memory is measured alone and its sockets are real.
Item lists within the body limit are bounded in tests/integration/test_gateway_refusals.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

import httpx
import msgpack
import pytest

from loraq.stack import LOCAL_DEV_ENV, Stack, start_redis
from tests.constants import MODEL

MiB = 1024 * 1024
LIMIT = 16 * MiB
JSON, MSGPACK = "application/json", "application/msgpack"
#: Each /healthz must answer within this: generous for a loaded machine, far below the tens of
#: seconds the event loop was held.
HEALTH_DEADLINE_S = 10.0
#: What the gateway may grow by while all of the bodies are in flight (they are 16 MiB each,
#: held a few times over while read and scanned; decoded, they would be gigabytes).
MAX_GROWTH_BYTES = 1024 * MiB


def msgpack_list(field: str, fill: bytes, model: str | None) -> bytes:
    """`{"model": model, field: [fill, fill, ...]}` in msgpack, as large as the body limit."""
    prefix = {"model": model} if model else {}
    head = bytes([0x80 | (len(prefix) + 1)])  # a fixmap of that many keys
    for key, value in prefix.items():
        head += msgpack.packb(key) + msgpack.packb(value)
    head += msgpack.packb(field) + b"\xdd"  # an array32
    count = (LIMIT - len(head) - 4) // len(fill)
    return head + count.to_bytes(4, "big") + fill * count


def json_list(field: str, fill: bytes, model: str | None) -> bytes:
    """The same in JSON."""
    prefix = f'"model": {json.dumps(model)}, ' if model else ""
    head = f'{{{prefix}"{field}": ['.encode()
    count = (LIMIT - len(head) - 2) // (len(fill) + 1)
    return head + (fill + b",") * (count - 1) + fill + b"]}"


ROUTES = {
    "/v1/jobs": ("items", MODEL),
    f"/v1/encode/{MODEL}": ("items", None),
    "/v1/embeddings": ("input", MODEL),
}
#: Per route: (content type, how the body is made, what fills its list): nils and empty maps.
HOSTILE = [
    (MSGPACK, msgpack_list, b"\xc0"),
    (MSGPACK, msgpack_list, b"\x80"),
    (JSON, json_list, b"null"),
    (JSON, json_list, b"{}"),
]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root: Path = tmp_path_factory.mktemp("hostile")
    redis_proc, url = start_redis(root / "redis")
    stack = Stack(env={"LORAQ_REDIS_URL": url, **LOCAL_DEV_ENV}, log_dir=root / "logs")
    try:
        stack.start_gateway()
        yield stack
    finally:
        stack.stop()
        redis_proc.stop()


def memory(stack: Stack, field: str) -> int:
    """`VmRSS` (now) or `VmHWM` (peak) of the gateway process, in bytes."""
    assert stack.gateway is not None
    status = Path(f"/proc/{stack.gateway.popen.pid}/status").read_text()
    (line,) = [line for line in status.splitlines() if line.startswith(f"{field}:")]
    return int(line.split()[1]) * 1024


def send_hostile(
    base: str, path: str, kind: str, make: Callable[..., bytes], fill: bytes
) -> httpx.Response:
    field, model = ROUTES[path]
    body = make(field, fill, model)
    assert len(body) <= LIMIT
    return httpx.post(base + path, content=body, headers={"content-type": kind}, timeout=300)


def test_hostile_bodies_are_refused_while_the_gateway_keeps_answering(gateway: Stack) -> None:
    before = memory(gateway, "VmRSS")
    health: list[int] = []
    cases = [(path, *hostile) for path in ROUTES for hostile in HOSTILE]
    with ThreadPoolExecutor(len(cases)) as pool:
        sent = {pool.submit(send_hostile, gateway.url, *case): case for case in cases}
        pending: set[Future[httpx.Response]] = set(sent)
        while pending:
            answer = httpx.get(gateway.url + "/healthz", timeout=HEALTH_DEADLINE_S)
            health.append(answer.status_code)
            pending = wait(pending, timeout=0.05, return_when=FIRST_COMPLETED).not_done
    for future, (path, kind, _, fill) in sent.items():
        response = future.result()
        error = response.json()["error"]
        assert (response.status_code, error["code"]) == (413, "BODY_TOO_LARGE"), (path, kind, fill)
        assert "1024 items" in error["message"]
    assert health and set(health) == {200}
    assert memory(gateway, "VmHWM") - before < MAX_GROWTH_BYTES
