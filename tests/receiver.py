"""A real HTTP webhook receiver on loopback whose answers each test scripts."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Answer:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    #: Set to hold the answer until the test releases it (a slow or silent receiver).
    hold: threading.Event | None = None


class Receiver:
    """`script[path]` is the list of answers for successive requests to a path; the last one
    repeats. Everything received is kept in `received`."""

    def __init__(self) -> None:
        self.script: dict[str, list[Answer]] = {}
        self.received: list[Received] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                answer = receiver._next(self.path, Received(self.path, dict(self.headers), body))
                if answer.hold is not None:
                    answer.hold.wait(30)
                try:
                    self.send_response(answer.status)
                    for name, value in answer.headers.items():
                        self.send_header(name, value)
                    self.send_header("content-length", "0")
                    self.end_headers()
                except OSError:
                    pass  # the sender gave up waiting

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _next(self, path: str, request: Received) -> Answer:
        with self._lock:
            self.received.append(request)
            answers = self.script.get(path, [Answer()])
            return answers.pop(0) if len(answers) > 1 else answers[0]

    def requests_to(self, path: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.path == path]

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
