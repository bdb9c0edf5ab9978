"""Start and stop the local stack's processes: redis-server, gateway, workers.

Used by `loraq up`, `loraq demo`, the benchmarks and the test fixtures, so every one of them runs
the real processes the same way. Each process logs to its own file; `stop()` sends SIGTERM and
kills after a grace period.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis

#: Local development and tests run without API keys; this must be said explicitly (the default
#: requires keys), and only these local entry points say it.
LOCAL_DEV_ENV = {"LORAQ_AUTH__MODE": "disabled"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(
    condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.05
) -> None:
    """The one way the launcher, benchmarks and tests wait: on a condition, never a fixed sleep,
    failing with what never happened."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def redis_reachable(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except redis.RedisError:
        return False


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def signal(self, sig: int) -> None:
        if self.alive:
            self.popen.send_signal(sig)

    def stop(self, grace: float = 20.0) -> int:
        """SIGTERM, then SIGKILL after `grace` seconds."""
        self.signal(signal.SIGTERM)
        try:
            return self.popen.wait(grace)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            return self.popen.wait(10)


def spawn(name: str, argv: list[str], env: Mapping[str, str], log_dir: Path) -> Process:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with log_path.open("ab") as log:
        popen = subprocess.Popen(
            argv, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT
        )
    return Process(name, popen, log_path)


def start_redis(
    work_dir: Path, port: int | None = None, appendonly: bool = False, log_dir: Path | None = None
) -> tuple[Process, str]:
    """A private redis-server; `appendonly` turns on AOF `everysec` (the recommended setting)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    port = port or free_port()
    work_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        binary,
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", str(work_dir),
        "--save", "",
        "--appendonly", "yes" if appendonly else "no",
        "--appendfsync", "everysec",
        "--maxmemory-policy", "noeviction",
    ]  # fmt: skip
    proc = spawn(f"redis-{port}", argv, {}, log_dir or work_dir)
    url = f"redis://127.0.0.1:{port}/0"
    wait_until(lambda: redis_reachable(url) or not proc.alive, 20, "redis-server")
    if not proc.alive:
        raise RuntimeError(f"redis-server failed to start:\n{proc.log_tail()}")
    return proc, url


def http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def python_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "loraq.cli", *args]


@dataclass
class Stack:
    """A gateway and workers against one Redis, configured by `LORAQ_*` variables."""

    env: dict[str, str]
    log_dir: Path
    port: int = field(default_factory=free_port)
    gateway: Process | None = None
    workers: list[Process] = field(default_factory=list)
    webhooks: Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start_gateway(self, timeout: float = 60) -> Process:
        argv = python_cli("gateway", "--host", "127.0.0.1", "--port", str(self.port))
        self.gateway = spawn("gateway", argv, self.env, self.log_dir)
        gw = self.gateway
        wait_until(lambda: http_ok(self.url + "/healthz") or not gw.alive, timeout, "gateway")
        if not gw.alive:
            raise RuntimeError(f"gateway exited:\n{gw.log_tail()}")
        return gw

    def start_worker(self, extra_env: Mapping[str, str] | None = None) -> Process:
        name = f"worker-{len(self.workers)}"
        proc = spawn(name, python_cli("worker"), {**self.env, **(extra_env or {})}, self.log_dir)
        self.workers.append(proc)
        return proc

    def start_webhooks(self) -> Process:
        proc = spawn("webhooks", python_cli("webhooks"), self.env, self.log_dir)
        self.webhooks = proc
        return proc

    def wait_ready(self, timeout: float = 120) -> None:
        def ready() -> bool:
            dead = [w for w in self.workers if not w.alive]
            if dead:
                raise RuntimeError(f"{dead[0].name} exited:\n{dead[0].log_tail()}")
            return http_ok(self.url + "/readyz")

        wait_until(ready, timeout, "a live worker (/readyz)", interval=0.2)

    def stop(self) -> None:
        for proc in [*self.workers, *(p for p in (self.webhooks, self.gateway) if p)]:
            with contextlib.suppress(Exception):
                proc.stop()
