"""The costly checks of a submit, run only once the caller is admitted, and each bounded.

Resolving a webhook's host and tokenizing `truncate: false` texts give early answers; they are
not the safeguards: the delivery resolves and checks the address again (and connects only to the
address it checked), and the worker refuses an over-long text with the same `INPUT_TOO_LONG`. So
each runs on a few threads of its own, never on the thread pool every route's blocking work
shares, DNS with a deadline; when those threads are all busy, or the texts are too many to
tokenize cheaply, the check is left to the delivery or the worker instead of waiting. A slow DNS
server or one tenant's huge texts cannot delay anybody else's requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from tokenizers import Tokenizer

from common.model_files import check_not_truncated, load_tokenizer, max_length
from common.settings import Settings, resolve_model_path
from common.ssrf import (
    IPAddress,
    Network,
    Target,
    Unresolvable,
    check_address,
    literal_ip,
    parse_networks,
    resolve,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

DNS_THREADS = 4
DNS_TIMEOUT_S = 2.0
TOKENIZE_THREADS = 2
#: Characters of one submit the gateway tokenizes at most; a larger job is left to the worker.
TOKENIZE_MAX_CHARS = 1_000_000

Resolver = Callable[[Target, list[Network]], IPAddress]
#: A model's tokenizer and token limit, or None when the gateway has no files for the model.
TokenizerFor = Callable[[str], tuple[Tokenizer, int] | None]


class Busy(Exception):
    """The lane's threads are all taken, or the call ran past its deadline."""


class Lane:
    """A few threads for one kind of blocking call; a call finding them all busy is not run."""

    def __init__(self, threads: int, name: str) -> None:
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix=name)
        self._free = threading.BoundedSemaphore(threads)

    async def run(self, fn: Callable[..., T], *args: Any, timeout: float | None = None) -> T:
        if not self._free.acquire(blocking=False):
            raise Busy
        future = self._pool.submit(fn, *args)
        # The thread stays taken until the call returns, even past the caller's deadline.
        future.add_done_callback(lambda _: self._free.release())
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout)
        except TimeoutError as exc:
            raise Busy from exc

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class SubmitChecks:
    def __init__(
        self,
        settings: Settings,
        resolver: Resolver = resolve,
        tokenizer: TokenizerFor | None = None,
    ) -> None:
        self._settings = settings
        self._allowed = parse_networks(settings.webhooks.allow_networks)
        self._resolve = resolver
        self._tokenizer_for = tokenizer or self._load_tokenizer
        self._tokenizers: dict[str, tuple[Tokenizer, int] | None] = {}
        self._lock = threading.Lock()
        self._dns = Lane(DNS_THREADS, "loraq-dns")
        self._tokenize = Lane(TOKENIZE_THREADS, "loraq-tokenize")

    async def webhook_host(self, target: Target) -> None:
        """Refuse a host that is, or resolves to, a forbidden address. One that does not resolve
        (yet), or not within the deadline, is left to the delivery, which checks again."""
        ip = literal_ip(target.host)
        if ip is not None:
            check_address(ip, self._allowed)
            return
        with contextlib.suppress(Busy, Unresolvable):
            await self._dns.run(self._resolve, target, self._allowed, timeout=DNS_TIMEOUT_S)

    async def not_truncated(self, model: str, texts: list[str]) -> None:
        """`INPUT_TOO_LONG` now for a text over the model's token limit, when that is cheap to
        know; otherwise the worker answers it."""
        if sum(map(len, texts)) > TOKENIZE_MAX_CHARS:
            return
        with contextlib.suppress(Busy):
            await self._tokenize.run(self._check_lengths, model, texts)

    def _check_lengths(self, model: str, texts: list[str]) -> None:
        loaded = self._tokenizer_for(model)
        if loaded is not None:
            tokenizer, limit = loaded
            check_not_truncated(tokenizer.encode_batch(texts), limit)

    def _load_tokenizer(self, model: str) -> tuple[Tokenizer, int] | None:
        """Loaded on first use. A gateway without the model's files (a slim gateway image)
        leaves the length check to the worker."""
        with self._lock:
            if model not in self._tokenizers:
                try:
                    path = resolve_model_path(self._settings.models[model])
                    self._tokenizers[model] = (load_tokenizer(path), max_length(path))
                except Exception as exc:
                    log.warning("no tokenizer for %s at the gateway (%s)", model, exc)
                    self._tokenizers[model] = None
            return self._tokenizers[model]

    def close(self) -> None:
        self._dns.close()
        self._tokenize.close()
