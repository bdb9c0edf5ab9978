"""One webhook POST under a deadline on all of it, reading no more of the answer than its head.

Per-operation timeouts do not bound an attempt: a receiver that drips a byte a second never lets
a read time out. So the whole exchange (DNS lookup, connect, TLS, sending, the status line and
headers) runs under one `asyncio.timeout`, and whatever the receiver does, the attempt ends when
it runs out. The body of the answer is never read: the status and `Retry-After` are all a
delivery needs, and closing the stream drops the connection, so a 512 MB answer costs at most
the one buffer that came with its headers.

Each attempt gets its own client: no connection is kept to a receiver or shared between hosts
that resolve to one address (their TLS names differ), and proxies from the environment are
ignored (they would resolve the host again, past the address check).
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx

from common.ssrf import IPAddress, Network, Target, resolve


@dataclass(frozen=True)
class Answer:
    status_code: int
    retry_after: str | None


def _host(address: IPAddress) -> str:
    return f"[{address}]" if address.version == 6 else str(address)


class Poster:
    def __init__(self, allowed: list[Network], timeout_s: float, lookups: int) -> None:
        self._allowed = allowed
        self.timeout_s = timeout_s
        self._tls = httpx.create_ssl_context()  # loaded once, not per attempt
        # getaddrinfo cannot be cancelled: a lookup that outlives its attempt finishes here,
        # off the attempt's thread, within the resolver's own timeouts.
        self._lookups = ThreadPoolExecutor(max_workers=lookups, thread_name_prefix="loraq-dns")

    def close(self) -> None:
        self._lookups.shutdown(wait=False, cancel_futures=True)

    def post(self, target: Target, body: bytes, headers: dict[str, str]) -> Answer:
        """The receiver's answer; TimeoutError once `timeout_s` have passed, whatever it does;
        WebhookUrlForbidden / Unresolvable from the address check."""
        return asyncio.run(self._post(target, body, headers))

    async def _post(self, target: Target, body: bytes, headers: dict[str, str]) -> Answer:
        async with asyncio.timeout(self.timeout_s):
            loop = asyncio.get_running_loop()
            address = await loop.run_in_executor(self._lookups, resolve, target, self._allowed)
            url = f"{target.scheme}://{_host(address)}:{target.port}{target.path}"
            extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
            async with (
                httpx.AsyncClient(
                    verify=self._tls,
                    timeout=self.timeout_s,
                    follow_redirects=False,
                    trust_env=False,
                ) as http,
                http.stream(
                    "POST", url, content=body, headers=headers, extensions=extensions
                ) as response,
            ):
                return Answer(response.status_code, response.headers.get("retry-after"))
