"""Token-budget batch former: rows of many jobs (and adapters) into few forward passes.

Task threads `submit` a job's rows and wait on the returned future; one batch thread owns the
engine. A window opens at the first pending row and closes when the pending rows would fill a
batch (`max_tokens` padded tokens or `max_items` rows) or `max_wait_ms` after that first row. It
takes the oldest pending rows that fit one batch, whatever job or adapter they come from, and
runs them sorted by length. A job's rows may span several batches; its future resolves when the
last one is done. One batch per window, oldest first: a window of several batches sorted by
length spread every job's rows over all of them, so no job finished (and no task thread took a
new one) until the last, and the device idled while the worker refilled (`bench/control_plane.py`
drain: GPU busy 0.70 -> 0.77 with 16-item jobs).

A forward that raises is retried on halves of its jobs until the failing job is alone, then only
that job fails (`ENCODE_FAILED`); the other jobs of the batch still get their vectors.

Rows of batch chunks (`bulk`) wait in a queue of their own, and a window holds either kind, never
both: interactive rows go first, in a forward of their own (small, so quick). A forward of bulk
rows pauses between its steps (each linear of a layer, its attention) for interactive rows that
came meanwhile, which run there in a forward of their own; while interactive jobs keep coming, a
forward of bulk rows is also cut to about `bulk_forward_ms` (from the measured time per padded
token), so its steps are short. So an interactive job waits for one step of a bulk forward, not
the whole of it: without the pauses, the first job after a quiet spell found a whole-batch bulk
forward (about a second of MiniLM on 2 CPU cores) in its way, and that set sync p99 during a
batch at 10-16x its idle figure (`bench/batch.py`). With no interactive traffic bulk forwards
fill whole batches.

A job submitted with a key (its job id) is checked at batch boundaries, through `ended`, for
having ended elsewhere (cancelled, or finished by another delivery): then its rows still pending
are dropped and its future fails with `JobStopped`. Each job is checked at most once per
`check_every_s`, and all of a batch's due jobs in one call, so a job that is done within that
time (most are) costs no check at all, and a cancelled job computes at most that long plus one
batch more.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

from common import metrics
from common.errors import EncodeFailed
from common.settings import BatchSettings
from worker.engine.types import Pause, Row, no_pause

log = logging.getLogger(__name__)

#: How often, at most, one job is checked for having ended elsewhere.
CHECK_EVERY_S = 0.25


class JobStopped(Exception):
    """The job ended elsewhere (e.g. it was cancelled): its remaining rows were not encoded."""


@dataclass(frozen=True)
class JobOutput:
    vectors: np.ndarray  # [rows, dims] float32
    inference_ms: float
    tokens: int = 0


@dataclass(eq=False)
class _Job:
    rows: Sequence[Row]
    future: Future[JobOutput]
    vectors: np.ndarray
    remaining: int
    inference_s: float = 0.0
    key: str | None = None
    checked_at: float = 0.0
    bulk: bool = False


@dataclass(frozen=True)
class _Entry:
    job: _Job
    index: int
    arrived: float

    @property
    def length(self) -> int:
        return len(self.job.rows[self.index].tokens)


@dataclass
class BatchStats:
    batches: int = 0
    rows: int = 0
    padded_tokens: int = 0
    real_tokens: int = 0
    forward_seconds: float = 0.0
    #: The batch thread's CPU in forwards: what the engine (not the job system) costs on CPU,
    #: or, on a GPU, what launching its kernels does.
    forward_cpu_seconds: float = 0.0


def form_batches(lengths: Sequence[int], max_tokens: int, max_items: int) -> list[list[int]]:
    """Indices of `lengths` grouped into batches: sorted by length, cut where rows x longest
    row would pass `max_tokens` (a row longer than the budget still gets a batch of its own)."""
    batches: list[list[int]] = []
    current: list[int] = []
    for i in sorted(range(len(lengths)), key=lengths.__getitem__):
        if current and (len(current) >= max_items or (len(current) + 1) * lengths[i] > max_tokens):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


#: The engine's forward: vectors of `rows`, calling the pause between its steps.
Encode = Callable[[list[Row], Pause], np.ndarray]


class Batcher:
    def __init__(
        self,
        encode: Encode,
        dims: int,
        settings: BatchSettings,
        clock: Callable[[], float] = time.monotonic,
        ended: Callable[[list[str]], Collection[str]] | None = None,
        check_every_s: float = CHECK_EVERY_S,
    ) -> None:
        self._encode = encode
        self._ended = ended
        self._check_every_s = check_every_s
        self._dims = dims
        self._settings = settings
        self._clock = clock
        self._cond = threading.Condition()
        self._pending: deque[_Entry] = deque()
        self._bulk: deque[_Entry] = deque()
        self._pending_tokens = 0
        self._backlog = False
        self._stopping = False
        self._interactive_at = -math.inf
        self._seconds_per_token: float | None = None  # forward time, an average of late
        #: Wall and CPU time of interactive forwards run in bulk forwards' pauses, which the
        #: bulk forward's own timing leaves out.
        self._paused_s = 0.0
        self._paused_cpu_s = 0.0
        self._thread: threading.Thread | None = None
        self.stats = BatchStats()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="loraq-batcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Finish every pending row, then end the batch thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def backlog(self) -> int:
        with self._cond:
            return len(self._pending) + len(self._bulk)

    def submit(
        self, rows: Sequence[Row], key: str | None = None, bulk: bool = False
    ) -> Future[JobOutput]:
        """`key`: the job's id, for `ended` to check; None: never checked. `bulk`: rows of a
        batch chunk, taken only after every interactive row."""
        future: Future[JobOutput] = Future()
        now = self._clock()
        vectors = np.empty((len(rows), self._dims), np.float32)
        job = _Job(rows, future, vectors, len(rows), key=key, checked_at=now, bulk=bulk)
        if not rows:
            future.set_result(JobOutput(job.vectors, 0.0))
            return future
        with self._cond:
            if self._stopping:
                raise RuntimeError("batcher is stopping")
            idle = not self._pending and not self._bulk
            queue = self._bulk if bulk else self._pending
            if not bulk:
                self._interactive_at = now
            for i in range(len(rows)):
                entry = _Entry(job, i, now)
                queue.append(entry)
                self._pending_tokens += entry.length
            # The batch thread waits for a first row, then for a full window or its deadline:
            # only those two need waking. Waking it on every submit cost a thread switch per
            # job (bench/control_plane.py profile).
            if idle or self._full():
                self._cond.notify_all()
        return future

    def _loop(self) -> None:
        while True:
            window = self._next_window()
            if window is None:
                return
            bulk = window[0].job.bulk
            self._run_window(window, self._serve_interactive if bulk else no_pause)

    def _run_window(self, window: list[_Entry], pause: Pause) -> None:
        s = self._settings
        lengths = [e.length for e in window]
        for batch in form_batches(lengths, s.max_tokens, s.max_items):
            entries = [window[i] for i in batch]
            self._stop_ended(entries)
            self._run(entries, pause)

    def _serve_interactive(self) -> None:
        """A bulk forward's pause: the interactive rows pending now run at once, in a forward
        of their own (which does not pause)."""
        if not self._pending:  # the common case, read without the lock: a pause costs ~nothing
            return
        with self._cond:
            window = self._take(self._pending, self._settings.max_tokens)
        if not window:
            return
        started, started_cpu = self._clock(), time.thread_time()
        self._run_window(window, no_pause)
        self._paused_s += self._clock() - started
        self._paused_cpu_s += time.thread_time() - started_cpu

    def _full(self) -> bool:
        s = self._settings
        rows = len(self._pending) + len(self._bulk)
        return rows >= s.max_items or self._pending_tokens >= s.max_tokens

    def _next_window(self) -> list[_Entry] | None:
        s = self._settings
        with self._cond:
            while not self._pending and not self._bulk:
                if self._stopping:
                    return None
                self._backlog = False
                self._cond.wait()
            first = min(q[0].arrived for q in (self._pending, self._bulk) if q)
            deadline = first + s.max_wait_ms / 1000
            while not self._backlog and not self._full() and not self._stopping:
                remaining = deadline - self._clock()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            queue = self._pending or self._bulk
            budget = s.max_tokens if queue is self._pending else self._bulk_budget()
            return self._take(queue, budget)

    def _take(self, queue: deque[_Entry], budget: int) -> list[_Entry]:
        """The oldest rows of `queue` that fit one forward of `budget` padded tokens (at least
        one row). Called with the lock held."""
        s = self._settings
        window: list[_Entry] = []
        longest = 0
        while queue and (
            not window
            or (
                len(window) < s.max_items
                and (len(window) + 1) * max(longest, queue[0].length) <= budget
            )
        ):
            entry = queue.popleft()
            self._pending_tokens -= entry.length
            longest = max(longest, entry.length)
            window.append(entry)
        # Rows left because this batch was full run next without waiting for company.
        self._backlog = bool(self._pending or self._bulk)
        return window

    def _bulk_budget(self) -> int:
        """Padded tokens of a bulk-only forward: all of `max_tokens` unless interactive jobs
        came of late, then what the measured pace fits in `bulk_forward_ms`."""
        s = self._settings
        quiet = self._clock() - self._interactive_at >= s.interactive_quiet_s
        if quiet or not self._seconds_per_token:
            return s.max_tokens
        return max(1, min(s.max_tokens, int(s.bulk_forward_ms / 1000 / self._seconds_per_token)))

    def _stop_ended(self, batch: list[_Entry]) -> None:
        """Ask `ended` about the batch's jobs not checked for `check_every_s`, and stop those
        that ended. A failing check stops nothing: compute goes on, the outcome write decides."""
        if self._ended is None:
            return
        now = self._clock()
        due = {
            e.job.key: e.job
            for e in batch
            if e.job.key is not None
            and not e.job.future.done()
            and now - e.job.checked_at >= self._check_every_s
        }
        if not due:
            return
        for job in due.values():
            job.checked_at = now
        try:
            ended = self._ended(list(due))
        except Exception as exc:
            log.warning("could not check whether jobs ended: %r", exc)
            return
        stopped = {due[key] for key in ended if key in due}
        if not stopped:
            return
        with self._cond:
            for queue in (self._pending, self._bulk):
                self._pending_tokens -= sum(e.length for e in queue if e.job in stopped)
            self._pending = deque(e for e in self._pending if e.job not in stopped)
            self._bulk = deque(e for e in self._bulk if e.job not in stopped)
        for job in stopped:
            job.future.set_exception(JobStopped(f"job {job.key} ended elsewhere"))

    def _run(self, batch: list[_Entry], pause: Pause) -> None:
        batch = [e for e in batch if not e.job.future.done()]
        if not batch:
            return
        paused, paused_cpu = self._paused_s, self._paused_cpu_s
        started, started_cpu = self._clock(), time.thread_time()
        try:
            vectors = self._encode([e.job.rows[e.index] for e in batch], pause)
        except Exception as exc:
            self._isolate(batch, exc, pause)
            return
        elapsed = self._clock() - started - (self._paused_s - paused)
        cpu = time.thread_time() - started_cpu - (self._paused_cpu_s - paused_cpu)
        self._record(batch, elapsed, cpu)
        for entry, vector in zip(batch, vectors, strict=True):
            entry.job.vectors[entry.index] = vector
            entry.job.remaining -= 1
        for job in dict.fromkeys(e.job for e in batch):
            job.inference_s += elapsed
            if job.remaining == 0:
                tokens = sum(len(row.tokens) for row in job.rows)
                job.future.set_result(JobOutput(job.vectors, job.inference_s * 1000, tokens))

    def _isolate(self, batch: list[_Entry], exc: Exception, pause: Pause) -> None:
        jobs = list(dict.fromkeys(e.job for e in batch))
        if len(jobs) == 1:
            log.warning("encode failed for one job: %r", exc)
            jobs[0].future.set_exception(
                EncodeFailed("the forward pass failed on this job's own items")
            )
            return
        half = set(jobs[: len(jobs) // 2])
        self._run([e for e in batch if e.job in half], pause)
        self._run([e for e in batch if e.job not in half], pause)

    def _record(self, batch: list[_Entry], elapsed: float, cpu: float) -> None:
        lengths = [e.length for e in batch]
        padded = len(batch) * max(lengths)
        st = self.stats
        st.batches += 1
        st.rows += len(batch)
        st.real_tokens += sum(lengths)
        st.padded_tokens += padded
        st.forward_seconds += elapsed
        st.forward_cpu_seconds += cpu
        pace = elapsed / padded
        last = self._seconds_per_token
        self._seconds_per_token = pace if last is None else 0.8 * last + 0.2 * pace
        metrics.BATCH_ROWS.observe(len(batch))
        metrics.BATCH_FILL.observe(min(1.0, padded / self._settings.max_tokens))
