"""Start and stop the local stack's processes: redis-server, gateway, workers.

Used by `loraq up`, `loraq demo`, the benchmarks and the test fixtures, so every one of them runs
the real processes the same way. Each process logs to its own file; `stop()` sends SIGTERM and
kills after a grace period.
"""

from __future__ import annotations

import contextlib
import json
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
from typing import Any

import httpx
import redis

from common.redis_connection import sync_client
from common.settings import Settings

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


def store_reachable(settings: Settings) -> bool:
    """Whether the Redis the settings name answers (its primary, with Sentinel)."""
    try:
        return bool(sync_client(settings, socket_connect_timeout=0.5).ping())
    except redis.RedisError:
        return False


def needs_local_redis(settings: Settings) -> bool:
    """Whether `loraq up` and `loraq demo` should start a redis-server of their own: when none
    answers at `redis_url`. Never in place of a Sentinel deployment, whose primary is not theirs
    to replace: its absence is an error."""
    if store_reachable(settings):
        return False
    if settings.sentinel.addresses:
        raise SystemExit(
            f"no Redis primary named {settings.sentinel.master_name!r} is reachable through "
            f"the Sentinels {settings.sentinel.addresses}"
        )
    return True


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


def redis_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    return binary


def start_redis(
    work_dir: Path,
    port: int | None = None,
    appendonly: bool = False,
    log_dir: Path | None = None,
    replica_of: int | None = None,
) -> tuple[Process, str]:
    """A private redis-server; `appendonly` turns on AOF `everysec` (the recommended setting);
    `replica_of`: a replica of the local redis-server on that port."""
    binary = redis_binary()
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
    if replica_of is not None:
        argv += ["--replicaof", "127.0.0.1", str(replica_of)]
    proc = spawn(f"redis-{port}", argv, {}, log_dir or work_dir)
    url = f"redis://127.0.0.1:{port}/0"
    wait_until(lambda: redis_reachable(url) or not proc.alive, 20, "redis-server")
    if not proc.alive:
        raise RuntimeError(f"redis-server failed to start:\n{proc.log_tail()}")
    return proc, url


@dataclass
class SentinelRedis:
    """A primary, its replicas and three Sentinels on this host, as production runs Redis for
    loraq (tests and benchmarks of failover): `env` points loraq at the Sentinels."""

    work_dir: Path
    master_name: str
    nodes: dict[int, Process]
    sentinels: dict[int, Process]

    @property
    def env(self) -> dict[str, str]:
        addresses = [f"127.0.0.1:{port}" for port in self.sentinels]
        return {
            "LORAQ_REDIS_URL": "redis://127.0.0.1/0",
            "LORAQ_SENTINEL__ADDRESSES": json.dumps(addresses),
            "LORAQ_SENTINEL__MASTER_NAME": self.master_name,
        }

    def sentinel_view(self, port: int) -> dict[str, Any]:
        """What one Sentinel says of the primary (`SENTINEL MASTER`)."""
        client = redis.Redis(port=port, socket_connect_timeout=0.5, decode_responses=True)
        with client:
            view: Any = client.sentinel_master(self.master_name)
            return dict(view)

    def primary_port(self, unanimous: bool = False) -> int | None:
        """The primary's port as most Sentinels (or, `unanimous`, all) see it; else None."""
        ports = []
        for port in self.sentinels:
            with contextlib.suppress(redis.RedisError):
                ports.append(int(self.sentinel_view(port)["port"]))
        best = max(set(ports), key=ports.count, default=None)
        needed = len(self.sentinels) if unanimous else len(self.sentinels) // 2 + 1
        return best if best is not None and ports.count(best) >= needed else None

    def replicas_online(self) -> int:
        """Replicas the primary streams to (their first full sync done)."""
        port = self.primary_port()
        if port is None:
            return 0
        with redis.Redis(port=port, socket_connect_timeout=0.5) as client:
            info = client.info("replication")
        return sum(
            1 for k, v in info.items() if k.startswith("slave") and v.get("state") == "online"
        )

    def ready(self) -> bool:
        """Every replica in sync, and every Sentinel sees the primary up, every replica and
        the other Sentinels: only then can they agree on a failover."""
        replicas = len(self.nodes) - 1
        try:
            views = [self.sentinel_view(port) for port in self.sentinels]
            if self.replicas_online() < replicas:
                return False
        except redis.RedisError:
            return False
        return all(
            "s_down" not in v["flags"]
            and int(v["num-slaves"]) >= replicas
            and int(v["num-other-sentinels"]) >= len(self.sentinels) - 1
            for v in views
        )

    def restart_node(self, port: int) -> None:
        """Start a killed data node again, empty, on its port, as a replica of the primary all
        Sentinels name, as a supervisor should: an empty node that came back as a primary
        would be copied by the others."""
        primary = self.primary_port(unanimous=True)
        if primary is None or primary == port:
            raise RuntimeError("restart a node only once the Sentinels have promoted another")
        self.nodes[port], _ = start_redis(
            self.work_dir / f"redis-{port}", port=port, replica_of=primary
        )

    def stop(self) -> None:
        for proc in [*self.sentinels.values(), *self.nodes.values()]:
            with contextlib.suppress(Exception):
                proc.stop()


def start_sentinel_redis(
    work_dir: Path,
    replicas: int = 1,
    master_name: str = "loraq",
    down_after_ms: int = 3000,
    failover_timeout_ms: int = 5000,
    timeout: float = 60,
) -> SentinelRedis:
    """A primary, `replicas` replicas and three Sentinels (quorum 2); a primary unreachable for
    `down_after_ms` is failed over. Sentinels ping once a second: much below 3 s a loaded host
    gets false verdicts, and a needless second failover can promote a node restarted empty."""
    primary, _ = start_redis(work_dir / "redis-primary")
    primary_port = int(primary.name.removeprefix("redis-"))
    nodes = {primary_port: primary}
    for i in range(replicas):
        proc, _ = start_redis(work_dir / f"redis-replica{i}", replica_of=primary_port)
        nodes[int(proc.name.removeprefix("redis-"))] = proc
    group = SentinelRedis(work_dir, master_name, nodes, {})
    for i in range(3):
        port = free_port()
        sentinel_dir = work_dir / f"sentinel{i}"
        sentinel_dir.mkdir(parents=True, exist_ok=True)
        conf = sentinel_dir / "sentinel.conf"
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {sentinel_dir}\n"
            f"sentinel monitor {master_name} 127.0.0.1 {primary_port} 2\n"
            f"sentinel down-after-milliseconds {master_name} {down_after_ms}\n"
            f"sentinel failover-timeout {master_name} {failover_timeout_ms}\n"
            f"sentinel parallel-syncs {master_name} 1\n"
        )
        argv = [redis_binary(), str(conf), "--sentinel"]
        group.sentinels[port] = spawn(f"sentinel-{port}", argv, {}, sentinel_dir)
    try:
        wait_until(group.ready, timeout, "the Sentinels to see the primary, replicas and peers")
    except TimeoutError:
        group.stop()
        raise
    return group


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
