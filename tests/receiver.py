"""A real HTTP webhook receiver on loopback whose answers each test scripts, hostile ones
included: silent, dripping its answer a byte at a time, or answering with a huge body."""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_CHUNK = b"\0" * 65536


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
    #: Send the status line and headers one byte every this many seconds.
    drip_s: float | None = None
    #: Answer with a body of this many bytes (zeros), sent until the sender hangs up.
    body_bytes: int = 0


class Receiver:
    """`script[path]` is the list of answers for successive requests to a path; the last one
    repeats. Everything received is kept in `received`; `answered[path]` counts the answers
    that ended (sent, or cut off by the sender hanging up), `body_sent[path]` the body bytes
    that went out, `most_in_flight[path]` the most requests it held open at once. Listens on
    `host` (any 127.x address works on Linux, so two receivers can be two hosts)."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.script: dict[str, list[Answer]] = {}
        self.received: list[Received] = []
        self.answered: Counter[str] = Counter()
        self.body_sent: Counter[str] = Counter()
        self._in_flight: Counter[str] = Counter()
        self.most_in_flight: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._closing = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                answer = receiver._next(self.path, Received(self.path, dict(self.headers), body))
                if answer.hold is not None:
                    answer.hold.wait(30)
                with contextlib.suppress(OSError):  # the sender gave up waiting
                    self._answer(answer)
                with receiver._lock:
                    receiver.answered[self.path] += 1
                    receiver._in_flight[self.path] -= 1

            def _answer(self, answer: Answer) -> None:
                lines = [f"{self.protocol_version} {answer.status} Scripted"]
                lines += [f"{name}: {value}" for name, value in answer.headers.items()]
                lines += [f"content-length: {answer.body_bytes}", "", ""]
                head = "\r\n".join(lines).encode()
                if answer.drip_s is None:
                    self.wfile.write(head)
                else:
                    for k in range(len(head)):
                        self.wfile.write(head[k : k + 1])
                        if self._hung_up(answer.drip_s) or receiver._closing.is_set():
                            return
                left = answer.body_bytes
                while left > 0:
                    sent = self.wfile.write(_CHUNK[: min(left, len(_CHUNK))])
                    with receiver._lock:
                        receiver.body_sent[self.path] += sent
                    left -= sent

            def _hung_up(self, wait_s: float) -> bool:
                """Wait up to `wait_s`, returning at once (True) when the sender closes."""
                readable, _, _ = select.select([self.connection], [], [], wait_s)
                return bool(readable) and not self.connection.recv(1, socket.MSG_PEEK)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer((host, 0), Handler)
        self.host = host
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        # serve_forever checks for shutdown every poll interval (0.5 s by default): each stop
        # waited that long.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"

    def _next(self, path: str, request: Received) -> Answer:
        with self._lock:
            self.received.append(request)
            self._in_flight[path] += 1
            self.most_in_flight[path] = max(self.most_in_flight[path], self._in_flight[path])
            answers = self.script.get(path, [Answer()])
            return answers.pop(0) if len(answers) > 1 else answers[0]

    def requests_to(self, path: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.path == path]

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()
