"""The costly checks of a submit, run only once the caller is admitted, and each bounded.

Resolving a webhook's host and tokenizing the texts give early answers (and token ids that
spare the GPU worker the tokenizing); they are not the safeguards: the delivery resolves and
checks the address again (and connects only to the address it checked), and the worker
tokenizes whatever arrives without ids, refusing an over-long text with the same
`INPUT_TOO_LONG`. So each runs on a few threads of its own, never on the thread pool every
route's blocking work shares, DNS with a deadline; when those threads are all busy, or the texts
are too many to tokenize cheaply, the work is left to the delivery or the worker instead of
waiting. A slow DNS server or one tenant's huge texts cannot delay anybody else's requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from common import token_ids
from common.model_files import ModelTokenizer, load_tokenizer
from common.schemas import TokenIds
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
#: Submits that may wait for a tokenizing thread, and how long: a burst of long texts is still
#: tokenized here, where gateways scale out, rather than on the GPU worker.
TOKENIZE_WAITING = 64
TOKENIZE_TIMEOUT_S = 5.0
#: Characters of one submit the gateway tokenizes at most; a larger job is left to the worker.
TOKENIZE_MAX_CHARS = 1_000_000
#: Up to this many characters (well under a millisecond) are tokenized on the event loop.
TOKENIZE_INLINE_CHARS = 2048

Resolver = Callable[[Target, list[Network]], IPAddress]
#: A model's tokenizer, or None when the gateway has no files for the model.
TokenizerFor = Callable[[str], ModelTokenizer | None]


class Busy(Exception):
    """The lane's threads are all taken, or the call ran past its deadline."""


class Lane:
    """A few threads for one kind of blocking call, and room for `waiting` calls queued for
    them; a call finding all of that taken is not run, and one still queued at its deadline is
    dropped."""

    def __init__(self, threads: int, name: str, waiting: int = 0) -> None:
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix=name)
        self._free = threading.BoundedSemaphore(threads + waiting)

    async def run(self, fn: Callable[..., T], *args: Any, timeout: float | None = None) -> T:
        if not self._free.acquire(blocking=False):
            raise Busy
        future = self._pool.submit(fn, *args)
        # The place stays taken until the call returns (or is dropped unstarted), even past
        # the caller's deadline.
        future.add_done_callback(lambda _: self._free.release())
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout)
        except TimeoutError as exc:
            future.cancel()
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
        self._tokenizers: dict[str, ModelTokenizer | None] = {}
        self._lock = threading.Lock()
        self._dns = Lane(DNS_THREADS, "loraq-dns")
        self._tokenize = Lane(TOKENIZE_THREADS, "loraq-tokenize", TOKENIZE_WAITING)

    async def webhook_host(self, target: Target) -> None:
        """Refuse a host that is, or resolves to, a forbidden address. One that does not resolve
        (yet), or not within the deadline, is left to the delivery, which checks again."""
        ip = literal_ip(target.host)
        if ip is not None:
            check_address(ip, self._allowed)
            return
        with contextlib.suppress(Busy, Unresolvable):
            await self._dns.run(self._resolve, target, self._allowed, timeout=DNS_TIMEOUT_S)

    async def tokenize(self, model: str, texts: list[str], truncate: bool) -> TokenIds | None:
        """The texts' token ids for the worker (`common.token_ids`), and, for `truncate: false`,
        `INPUT_TOO_LONG` now for a text over the model's limit. A few characters are tokenized
        on the event loop (less than a thread handoff costs), more on the lane's threads; None
        (the worker tokenizes) when that is not cheap: too many characters, the lane busy, or
        no tokenizer here. A model's first call goes to the lane: loading its tokenizer reads
        files, which the event loop must not wait on."""
        chars = sum(map(len, texts))
        if chars > TOKENIZE_MAX_CHARS:
            return None
        if chars <= TOKENIZE_INLINE_CHARS and model in self._tokenizers:
            return self._tokenize_now(model, texts, truncate)
        with contextlib.suppress(Busy):
            return await self._tokenize.run(
                self._tokenize_now, model, texts, truncate, timeout=TOKENIZE_TIMEOUT_S
            )
        return None

    def _tokenize_now(self, model: str, texts: list[str], truncate: bool) -> TokenIds | None:
        loaded = self._tokenizer_for(model)
        if loaded is None:
            return None
        return token_ids.pack(loaded.id, loaded.ids(texts, truncate))

    def _load_tokenizer(self, model: str) -> ModelTokenizer | None:
        """Loaded on first use. A gateway without the model's files (a slim gateway image)
        leaves tokenizing and the length check to the worker."""
        with self._lock:
            if model not in self._tokenizers:
                try:
                    path = resolve_model_path(self._settings.models[model])
                    self._tokenizers[model] = load_tokenizer(path)
                except Exception as exc:
                    log.warning("no tokenizer for %s at the gateway (%s)", model, exc)
                    self._tokenizers[model] = None
            return self._tokenizers[model]

    def close(self) -> None:
        self._dns.close()
        self._tokenize.close()
