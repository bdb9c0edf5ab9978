"""The token-budget batch former (worker/batcher.py) with a fake, recording encode function."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout

import numpy as np
import pytest

from common.errors import EncodeFailed
from common.settings import BatchSettings
from worker.batcher import Batcher, JobOutput, JobStopped, form_batches
from worker.engine.types import Pause, Row, no_pause

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

DIMS = 3
POISON = 666
WAIT = 5.0  # seconds any single future may take in these tests


class FakeEncode:
    """Vector of a row = (first token, length, slot or -1): identifies the row it came from.
    Raises on any batch holding a row that contains the `POISON` token."""

    def __init__(self) -> None:
        self.batches: list[list[Row]] = []
        self.calls = 0
        self.lock = threading.Lock()

    def __call__(self, rows: list[Row], pause: Pause = no_pause) -> np.ndarray:
        with self.lock:
            self.calls += 1
            if any(POISON in r.tokens for r in rows):
                raise RuntimeError("poisoned row")
            self.batches.append(list(rows))
        return np.array(
            [[r.tokens[0], len(r.tokens), -1 if r.slot is None else r.slot] for r in rows],
            dtype=np.float32,
        )


def expected(rows: list[Row]) -> np.ndarray:
    return np.array(
        [[r.tokens[0], len(r.tokens), -1 if r.slot is None else r.slot] for r in rows],
        dtype=np.float32,
    )


def rows_of(lengths: list[int], first: int = 1, slot: int | None = None) -> list[Row]:
    """Rows whose first token is unique (`first`, `first + 1`, ...), of the given lengths."""
    return [Row([first + i] + [7] * (n - 1), slot, False) for i, n in enumerate(lengths)]


@pytest.fixture
def encode() -> FakeEncode:
    return FakeEncode()


@pytest.fixture
def make_batcher(encode: FakeEncode) -> Iterator[object]:
    made: list[Batcher] = []

    def make(**settings: float) -> Batcher:
        b = Batcher(encode, DIMS, BatchSettings(**settings))
        made.append(b)
        return b

    yield make
    for b in made:
        b.stop(timeout=WAIT)


def test_rows_of_several_jobs_share_one_batch(make_batcher, encode: FakeEncode) -> None:
    batcher = make_batcher(max_tokens=1000, max_items=100, max_wait_ms=0)
    jobs = [rows_of([3, 4], first=10), rows_of([2], first=20, slot=1), rows_of([5], first=30)]
    futures = [batcher.submit(rows) for rows in jobs]  # all pending before the thread starts
    batcher.start()
    for rows, fut in zip(jobs, futures, strict=True):
        out = fut.result(timeout=WAIT)
        assert isinstance(out, JobOutput)
        np.testing.assert_array_equal(out.vectors, expected(rows))
        assert out.vectors.dtype == np.float32
        assert out.inference_ms >= 0
    assert len(encode.batches) == 1
    assert sorted(r.tokens[0] for r in encode.batches[0]) == [10, 11, 20, 30]
    assert batcher.stats.batches == 1 and batcher.stats.rows == 4
    assert batcher.stats.real_tokens == 3 + 4 + 2 + 5
    assert batcher.stats.padded_tokens == 4 * 5


def test_interactive_rows_go_before_bulk_rows_queued_earlier(make_batcher, encode) -> None:
    """A batch chunk queued first still waits: interactive rows run first, in a forward of their
    own, and bulk rows follow in forwards of theirs."""
    batcher = make_batcher(max_tokens=1000, max_items=4, max_wait_ms=0)
    bulk = rows_of([3] * 6, first=100)
    interactive = rows_of([3, 3], first=10)
    bulk_future = batcher.submit(bulk, bulk=True)
    interactive_future = batcher.submit(interactive)
    batcher.start()
    np.testing.assert_array_equal(
        interactive_future.result(timeout=WAIT).vectors, expected(interactive)
    )
    np.testing.assert_array_equal(bulk_future.result(timeout=WAIT).vectors, expected(bulk))
    firsts = [sorted(r.tokens[0] for r in batch) for batch in encode.batches]
    assert firsts == [[10, 11], [100, 101, 102, 103], [104, 105]]


class ClockedEncode(FakeEncode):
    """Each forward takes 1 ms per padded token on a clock of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def __call__(self, rows: list[Row], pause: Pause = no_pause) -> np.ndarray:
        self.now += 0.001 * len(rows) * max(len(r.tokens) for r in rows)
        return super().__call__(rows)


@pytest.mark.parametrize("interactive", [True, False])
def test_bulk_forwards_are_cut_short_only_while_interactive_jobs_come(interactive: bool) -> None:
    """At 1 ms per padded token and `bulk_forward_ms` 12, a bulk forward of 4-token rows holds
    3 rows while interactive jobs come, and a whole batch (10 rows) when none did."""
    encode = ClockedEncode()
    settings = BatchSettings(
        max_tokens=1000, max_items=10, max_wait_ms=0, bulk_forward_ms=12, interactive_quiet_s=60
    )
    batcher = Batcher(encode, DIMS, settings, clock=encode.clock)
    batcher.start()
    try:
        warm_up = rows_of([4] * 2, first=1)  # measures the pace
        batcher.submit(warm_up, bulk=not interactive).result(timeout=WAIT)
        bulk = rows_of([4] * 30, first=100)
        np.testing.assert_array_equal(
            batcher.submit(bulk, bulk=True).result(timeout=WAIT).vectors, expected(bulk)
        )
    finally:
        batcher.stop(timeout=WAIT)
    sizes = [len(b) for b in encode.batches[1:]]
    assert sizes == ([3] * 10 if interactive else [10] * 3)


class PausingEncode(ClockedEncode):
    """A forward of bulk rows (first token >= 100) pauses between 4 steps of equal time; at
    its first pause an interactive job arrives (`arrive`)."""

    def __init__(self) -> None:
        super().__init__()
        self.arrive: Callable[[], None] = lambda: None
        self.log: list[str] = []

    def __call__(self, rows: list[Row], pause: Pause = no_pause) -> np.ndarray:
        kind = "bulk" if rows[0].tokens[0] >= 100 else "interactive"
        if kind == "interactive":
            self.log.append(kind)
            return super().__call__(rows, pause)
        step = 0.001 * len(rows) * max(len(r.tokens) for r in rows) / 4
        for i in range(4):
            self.now += step
            self.log.append(f"bulk step {i}")
            if i == 0:
                self.arrive()
            pause()
        return FakeEncode.__call__(self, rows)


def test_an_interactive_job_runs_in_the_pause_of_a_bulk_forward_in_progress() -> None:
    """No quiet spell cut the bulk forward short (it holds the whole batch): the interactive
    job that came during it runs at the forward's next pause, not after it, and the bulk
    forward's own time (its pace, its job's inference time) leaves the paused time out."""
    encode = PausingEncode()
    settings = BatchSettings(max_tokens=1000, max_items=100, max_wait_ms=0)
    batcher = Batcher(encode, DIMS, settings, clock=encode.clock)
    interactive = rows_of([4, 4], first=10)
    arrived: list[Future[JobOutput]] = []
    encode.arrive = lambda: arrived.append(batcher.submit(interactive))
    bulk = rows_of([5] * 40, first=100)
    batcher.start()
    try:
        bulk_out = batcher.submit(bulk, bulk=True).result(timeout=WAIT)
        np.testing.assert_array_equal(bulk_out.vectors, expected(bulk))
        np.testing.assert_array_equal(
            arrived[0].result(timeout=WAIT).vectors, expected(interactive)
        )
    finally:
        batcher.stop(timeout=WAIT)
    assert encode.log == ["bulk step 0", "interactive", "bulk step 1", "bulk step 2", "bulk step 3"]
    assert [len(b) for b in encode.batches] == [2, 40]
    assert bulk_out.inference_ms == pytest.approx(40 * 5)  # 1 ms per padded token, no more
    assert arrived[0].result().inference_ms == pytest.approx(2 * 4)
    assert batcher.stats.forward_seconds == pytest.approx((40 * 5 + 2 * 4) / 1000)


def test_interactive_forwards_do_not_pause() -> None:
    """Only bulk forwards pause: interactive forwards (short by their nature) get `no_pause`,
    so a pause never nests in a pause."""
    pauses: list[Pause] = []

    def encode(rows: list[Row], pause: Pause) -> np.ndarray:
        pauses.append(pause)
        return expected(rows)

    batcher = Batcher(encode, DIMS, BatchSettings(max_wait_ms=0))
    batcher.start()
    try:
        batcher.submit(rows_of([3], first=1)).result(timeout=WAIT)
        batcher.submit(rows_of([3], first=2), bulk=True).result(timeout=WAIT)
    finally:
        batcher.stop(timeout=WAIT)
    assert pauses[0] is no_pause and pauses[1] is not no_pause


def test_token_budget_and_max_items_respected(make_batcher, encode: FakeEncode) -> None:
    rng = np.random.default_rng(0)
    max_tokens, max_items = 64, 5
    batcher = make_batcher(max_tokens=max_tokens, max_items=max_items, max_wait_ms=0)
    lengths = [int(n) for n in rng.integers(1, 40, size=60)] + [100, 80]  # two over budget
    jobs = [rows_of(lengths[i : i + 4], first=1000 + i) for i in range(0, len(lengths), 4)]
    futures = [batcher.submit(rows) for rows in jobs]
    batcher.start()
    for rows, fut in zip(jobs, futures, strict=True):
        np.testing.assert_array_equal(fut.result(timeout=WAIT).vectors, expected(rows))
    assert sum(len(b) for b in encode.batches) == len(lengths)
    for batch in encode.batches:
        longest = max(len(r.tokens) for r in batch)
        assert len(batch) <= max_items
        assert len(batch) == 1 or len(batch) * longest <= max_tokens, batch
    singles = [b for b in encode.batches if len(b[0].tokens) > max_tokens]
    assert sorted(len(b[0].tokens) for b in singles) == [80, 100]
    assert all(len(b) == 1 for b in singles)


def test_window_closes_after_max_wait_when_under_budget(make_batcher, encode) -> None:
    max_wait_s = 0.15
    batcher = make_batcher(max_tokens=10_000, max_items=100, max_wait_ms=max_wait_s * 1000)
    batcher.start()
    started = time.monotonic()
    fut = batcher.submit(rows_of([3]))
    out = fut.result(timeout=WAIT)
    elapsed = time.monotonic() - started
    np.testing.assert_array_equal(out.vectors, expected(rows_of([3])))
    assert elapsed >= max_wait_s * 0.9  # it waited for company...
    assert elapsed < WAIT  # ...but not forever
    assert len(encode.batches) == 1


def test_full_window_does_not_wait(make_batcher, encode: FakeEncode) -> None:
    batcher = make_batcher(max_tokens=64, max_items=4, max_wait_ms=60_000)
    batcher.start()
    rows = rows_of([2, 2, 2, 2])  # max_items reached: the window closes at once
    out = batcher.submit(rows).result(timeout=WAIT)  # far less than max_wait_ms
    np.testing.assert_array_equal(out.vectors, expected(rows))

    big = rows_of([40, 40], first=50)  # max_tokens reached
    out = batcher.submit(big).result(timeout=WAIT)
    np.testing.assert_array_equal(out.vectors, expected(big))


def test_job_spanning_batches_resolves_once_in_order(make_batcher, encode: FakeEncode) -> None:
    batcher = make_batcher(max_tokens=1000, max_items=3, max_wait_ms=0)
    lengths = [9, 1, 5, 2, 8, 3, 7, 4, 6, 10]  # sorting by length reorders them
    rows = rows_of(lengths, first=100)
    other = rows_of([5, 5], first=200)
    fut = batcher.submit(rows)
    other_fut = batcher.submit(other)
    resolutions: list[JobOutput] = []
    fut.add_done_callback(lambda f: resolutions.append(f.result()))
    batcher.start()
    out = fut.result(timeout=WAIT)
    np.testing.assert_array_equal(out.vectors, expected(rows))
    np.testing.assert_array_equal(other_fut.result(timeout=WAIT).vectors, expected(other))
    batches_with_job = [b for b in encode.batches if any(100 <= r.tokens[0] < 200 for r in b)]
    assert len(batches_with_job) >= 4  # 10 rows, 3 per batch
    batcher.stop(timeout=WAIT)
    assert len(resolutions) == 1
    assert resolutions[0] is out


def test_poison_job_fails_alone(make_batcher, encode: FakeEncode) -> None:
    batcher = make_batcher(max_tokens=10_000, max_items=100, max_wait_ms=0)
    good = [rows_of([3, 4], first=10 * k) for k in range(1, 6)]
    poison = [Row([1, POISON, 2], None, False), Row([3], None, False)]
    futures = [batcher.submit(rows) for rows in good[:2]]
    bad = batcher.submit(poison)
    futures += [batcher.submit(rows) for rows in good[2:]]
    batcher.start()

    with pytest.raises(EncodeFailed) as info:
        bad.result(timeout=WAIT)
    assert info.value.code == "ENCODE_FAILED"
    # The exception text goes to the worker's log, never into the tenant's job view.
    assert "poisoned" not in info.value.message
    for rows, fut in zip(good, futures, strict=True):
        np.testing.assert_array_equal(fut.result(timeout=WAIT).vectors, expected(rows))
    # The first forward held everything; the rest bisected the failure.
    assert encode.calls > 1
    assert all(all(POISON not in r.tokens for r in b) for b in encode.batches)
    assert sum(len(b) for b in encode.batches) == 2 * len(good)


def test_two_poison_jobs_fail_independently(make_batcher) -> None:
    batcher = make_batcher(max_tokens=10_000, max_items=100, max_wait_ms=0)
    first_bad = batcher.submit([Row([POISON], None, False)])
    good = rows_of([2, 2, 2], first=40)
    good_fut = batcher.submit(good)
    second_bad = batcher.submit([Row([5], None, False), Row([POISON, 1], 3, False)])
    batcher.start()
    for fut in (first_bad, second_bad):
        with pytest.raises(EncodeFailed):
            fut.result(timeout=WAIT)
    np.testing.assert_array_equal(good_fut.result(timeout=WAIT).vectors, expected(good))


def test_stop_drains_pending_rows(make_batcher, encode: FakeEncode) -> None:
    # A huge max_wait: without stop(), the window would stay open for a minute.
    batcher = make_batcher(max_tokens=10_000, max_items=1000, max_wait_ms=60_000)
    batcher.start()
    jobs = [rows_of([2, 3], first=10), rows_of([4], first=20)]
    futures = [batcher.submit(rows) for rows in jobs]
    assert batcher.backlog() == 3  # the window is still open, waiting for more rows
    started = time.monotonic()
    batcher.stop(timeout=WAIT)
    assert time.monotonic() - started < WAIT
    for rows, fut in zip(jobs, futures, strict=True):
        assert fut.done()
        np.testing.assert_array_equal(fut.result(timeout=0).vectors, expected(rows))
    assert batcher.backlog() == 0
    with pytest.raises(RuntimeError, match="stopping"):
        batcher.submit(rows_of([1]))


def test_empty_job_resolves_at_once(make_batcher, encode: FakeEncode) -> None:
    batcher = make_batcher()
    out = batcher.submit([]).result(timeout=0)
    assert out.vectors.shape == (0, DIMS)
    assert encode.calls == 0


def test_unfinished_future_does_not_resolve_early(make_batcher) -> None:
    batcher = make_batcher(max_tokens=10_000, max_items=100, max_wait_ms=0)
    fut: Future[JobOutput] = batcher.submit(rows_of([2]))
    with pytest.raises(FutureTimeout):
        fut.result(timeout=0.01)  # the batch thread is not started yet
    batcher.start()
    assert fut.result(timeout=WAIT).vectors.shape == (1, DIMS)


def test_form_batches_sorts_by_length() -> None:
    lengths = [5, 1, 3, 2, 4, 1]
    batches = form_batches(lengths, max_tokens=1000, max_items=100)
    assert [[lengths[i] for i in b] for b in batches] == [[1, 1, 2, 3, 4, 5]]
    assert sorted(i for b in batches for i in b) == list(range(6))


def test_form_batches_cuts_at_budget() -> None:
    lengths = [4, 4, 4, 8, 8, 1, 30]
    batches = form_batches(lengths, max_tokens=16, max_items=10)
    assert [[lengths[i] for i in b] for b in batches] == [[1, 4, 4, 4], [8, 8], [30]]
    batches = form_batches(lengths, max_tokens=1000, max_items=3)
    assert [[lengths[i] for i in b] for b in batches] == [[1, 4, 4], [4, 8, 8], [30]]
    assert form_batches([], max_tokens=16, max_items=3) == []


class Ended:
    """The `ended` check of a batcher: which of the asked job ids ended elsewhere; records
    each call, and can fail."""

    def __init__(self) -> None:
        self.ended: set[str] = set()
        self.calls: list[list[str]] = []
        self.error: Exception | None = None

    def __call__(self, job_ids: list[str]) -> set[str]:
        self.calls.append(sorted(job_ids))
        if self.error is not None:
            raise self.error
        return self.ended & set(job_ids)


def test_a_job_that_ended_elsewhere_stops_at_the_next_batch(encode: FakeEncode) -> None:
    """A cancel arrives while job a's first batch is computed: a's other nine rows are never
    encoded (its future fails with JobStopped); job b, in the same batcher, is unaffected."""
    ended = Ended()

    def encode_then_cancel(rows: list[Row], pause: Pause) -> np.ndarray:
        ended.ended.add("a")
        return encode(rows)

    batcher = Batcher(
        encode_then_cancel, DIMS, BatchSettings(max_items=1, max_wait_ms=0), ended=ended,
        check_every_s=0,
    )  # fmt: skip
    a = batcher.submit(rows_of([3] * 10, first=100), key="a")
    b_rows = rows_of([3, 3, 3], first=200)
    b = batcher.submit(b_rows, key="b")
    batcher.start()
    try:
        np.testing.assert_array_equal(b.result(timeout=WAIT).vectors, expected(b_rows))
        with pytest.raises(JobStopped):
            a.result(timeout=WAIT)
    finally:
        batcher.stop(timeout=WAIT)
    encoded_a = [r for batch in encode.batches for r in batch if r.tokens[0] < 200]
    assert len(encoded_a) == 1
    assert batcher.backlog() == 0


def test_jobs_are_checked_at_most_once_per_interval(encode: FakeEncode) -> None:
    """On a frozen clock no job is ever due for a check: a job done within the interval costs
    no round trip. Unkeyed jobs are never checked."""
    ended = Ended()
    ended.ended.add("a")
    batcher = Batcher(
        encode, DIMS, BatchSettings(max_items=1, max_wait_ms=0), clock=lambda: 100.0,
        ended=ended, check_every_s=0.25,
    )  # fmt: skip
    rows = rows_of([2] * 6)
    a = batcher.submit(rows, key="a")
    unkeyed = batcher.submit(rows_of([2] * 3, first=50))
    batcher.start()
    try:
        np.testing.assert_array_equal(a.result(timeout=WAIT).vectors, expected(rows))
        unkeyed.result(timeout=WAIT)
    finally:
        batcher.stop(timeout=WAIT)
    assert ended.calls == []


def test_a_failing_check_stops_nothing(encode: FakeEncode) -> None:
    ended = Ended()
    ended.error = ConnectionError("redis down")
    batcher = Batcher(
        encode, DIMS, BatchSettings(max_items=2, max_wait_ms=0), ended=ended, check_every_s=0
    )
    jobs = [rows_of([2] * 5, first=10), rows_of([3] * 3, first=30)]
    futures = [batcher.submit(rows, key=f"j{i}") for i, rows in enumerate(jobs)]
    batcher.start()
    try:
        for rows, fut in zip(jobs, futures, strict=True):
            np.testing.assert_array_equal(fut.result(timeout=WAIT).vectors, expected(rows))
    finally:
        batcher.stop(timeout=WAIT)
    assert ended.calls, "the check was tried"
