"""Error answers at the HTTP level, on a real uvicorn server (in a thread, lifespan off: these
routes need no Redis): a 405 names every method of its path in `Allow`, and a bug's 500 leaves
the keep-alive connection open."""

from __future__ import annotations

import http.client
import json
import logging
from collections.abc import Iterator

import httpx
import pytest

from api.main import create_app
from common.settings import Settings
from tests.asgi_server import serve


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, int]]:
    app = create_app(Settings(auth={"mode": "disabled"}))

    async def boom() -> None:
        raise RuntimeError("a bug")

    app.add_api_route("/boom", boom)
    with serve(app, lifespan="off") as url:
        yield "127.0.0.1", httpx.URL(url).port


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PUT", "/v1/jobs/job_0123456789abcdef", "DELETE, GET"),
        ("PATCH", "/v1/jobs/job_0123456789abcdef", "DELETE, GET"),
        ("GET", "/v1/jobs", "POST"),
        ("DELETE", "/healthz", "GET"),
        ("GET", "/v1/encode/some/model", "POST"),
    ],
)
def test_405_names_every_method_of_the_path(
    server: tuple[str, int], method: str, path: str, allow: str
) -> None:
    host, port = server
    response = httpx.request(method, f"http://{host}:{port}{path}", timeout=30)
    assert response.status_code == 405
    assert response.headers["allow"] == allow
    assert response.json()["error"]["code"] == "METHOD_NOT_ALLOWED"


def test_a_bug_answers_500_and_keeps_the_connection(
    server: tuple[str, int], caplog: pytest.LogCaptureFixture
) -> None:
    host, port = server
    connection = http.client.HTTPConnection(host, port, timeout=30)
    try:
        with caplog.at_level(logging.ERROR):
            connection.request("GET", "/boom")
            failed = connection.getresponse()
            body = json.loads(failed.read())
        assert failed.status == 500
        assert body == {"error": {"code": "INTERNAL_ERROR", "message": "internal error"}}
        assert failed.getheader("x-sie-error-code") == "INTERNAL_ERROR"
        assert not failed.will_close
        # The same connection serves the next request (the server did not drop it).
        connection.request("GET", "/healthz")
        after = connection.getresponse()
        assert (after.status, json.loads(after.read())) == (200, {"status": "ok"})
    finally:
        connection.close()
    # Logged once, by the gateway, with its traceback; not again by the server.
    logged = [r for r in caplog.records if r.exc_info and isinstance(r.exc_info[1], RuntimeError)]
    assert [r.getMessage() for r in logged] == ["unhandled error on GET /boom"]
