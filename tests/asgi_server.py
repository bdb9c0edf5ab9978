"""An ASGI app on a real socket, served by uvicorn in a thread of the test process: for callers
that need a URL (the SDK, the CLI, raw HTTP connections) without a server process to start."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import uvicorn

from loraq.stack import free_port, wait_until


@contextmanager
def serve(app: Any, lifespan: Literal["on", "off"] = "on") -> Iterator[str]:
    """The app's base URL while it serves; `lifespan="off"` for routes that need no Redis."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, lifespan=lifespan, log_level="info")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started or not thread.is_alive(), 30, "uvicorn")
        if not server.started:
            raise RuntimeError("uvicorn stopped before it started serving")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
