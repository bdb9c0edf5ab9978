"""`loraq` command line: talk to a running gateway (submit, get, wait, cancel, encode,
`batch ...` for the Batches API, and `adapters ...` for the adapter registry).

The command belongs to the client distribution, which any machine that talks to a gateway has;
other installed distributions add their commands through the `loraq.commands` entry point
group (a function that is given argparse's subparsers). The loraq server adds its own that way
(gateway, worker, demo, ...), so one `loraq` has everything where both are installed and only
the client commands where only the client is."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import itertools
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import IO, Any, TypeAlias

from loraq_client import _json
from loraq_client.batches import batch_lines
from loraq_client.client import (
    DEFAULT_POLL_S,
    AsyncJob,
    AsyncLoraqClient,
    FileInput,
    JobFailedError,
    JobTimeoutError,
    LoraqClient,
    LoraqError,
)

DEFAULT_URL = "http://127.0.0.1:8080"
#: Exit status when a wait ran out of time, as timeout(1) has it.
EXIT_TIMEOUT = 124
#: Entry point group of the functions that add commands to `loraq`.
COMMANDS_GROUP = "loraq.commands"
DESCRIPTION = (
    "Talk to a loraq gateway (submit, get, wait, cancel, encode, batch, adapters). Where the "
    "loraq server "
    "is installed, its commands (gateway, worker, demo, ...) are here too."
)
#: The Batches API's list pages hold at most this many.
_MAX_PAGE = 100

Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
AddCommands: TypeAlias = Callable[[Subcommands], None]
_Command: TypeAlias = Callable[[argparse.Namespace], int]


def _reports_errors(command: _Command) -> _Command:
    """A gateway's refusal is an expected outcome for a CLI: one line on stderr and an exit
    status, not a traceback."""

    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except JobTimeoutError as exc:
            print(f"loraq: {exc}", file=sys.stderr)
            return EXIT_TIMEOUT
        except (LoraqError, OSError) as exc:  # OSError: an unreadable --file
            print(f"loraq: {exc}", file=sys.stderr)
            return 1

    return run


def _client(args: argparse.Namespace) -> LoraqClient:
    return LoraqClient(args.url, api_key=args.api_key)


def _options(args: argparse.Namespace) -> dict[str, object]:
    return {"lora_id": args.lora_id} if args.lora_id else {}


def _iter_lines(path: str) -> Iterator[tuple[int, str]]:
    """(line index, text) of every non-blank line, read as they come. Split on newlines only:
    str.splitlines would also split inside a text at form feeds and Unicode separators."""
    with contextlib.ExitStack() as opened:
        stream = sys.stdin if path == "-" else opened.enter_context(open(path, encoding="utf-8"))
        for i, line in enumerate(stream):
            text = line.removesuffix("\n").removesuffix("\r")
            if text.strip():
                yield i, text


def _read_lines(path: str) -> list[tuple[int, str]]:
    return list(_iter_lines(path))


def _print_json(data: Any) -> None:
    print(json.dumps(data, separators=(",", ":")))


@_reports_errors
def _submit(args: argparse.Namespace) -> int:
    texts = [text for _, text in _read_lines(args.file)]
    with _client(args) as client:
        job = client.submit(args.model, texts, _options(args), webhook=args.webhook)
    print(job.id)
    return 0


@_reports_errors
def _get(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _print_json(client.get(args.job_id).data)
    return 0


@_reports_errors
def _wait(args: argparse.Namespace) -> int:
    with _client(args) as client:
        try:
            job = client.get(args.job_id).wait(args.timeout)
        except JobFailedError as exc:
            _print_json(exc.view)
            print(f"loraq: {exc}", file=sys.stderr)
            return 1
    _print_json(job.data)
    return 0


@_reports_errors
def _cancel(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _print_json(client.cancel(args.job_id).data)
    return 0


class _Progress:
    """A `\r` line on a terminal; elsewhere (logs, CI) one summary line at the end, so
    redirected stderr is not filled with carriage returns."""

    def __init__(self, texts: int, jobs: int, stream: IO[str]) -> None:
        self.texts, self.jobs, self.stream = texts, jobs, stream
        self.texts_done = self.jobs_done = 0
        self.live = stream.isatty()
        self.started = time.monotonic()

    def job_done(self, texts: int) -> None:
        self.texts_done += texts
        self.jobs_done += 1
        if self.live:
            self.stream.write(f"\r{self._line()}")
            self.stream.flush()

    def finish(self) -> None:
        elapsed = time.monotonic() - self.started
        start = "\r" if self.live else ""
        self.stream.write(f"{start}{self._line()} in {elapsed:.1f}s\n")

    def _line(self) -> str:
        return f"encoded {self.texts_done}/{self.texts} texts ({self.jobs_done}/{self.jobs} jobs)"


async def _encode_lines(
    client: AsyncLoraqClient,
    args: argparse.Namespace,
    lines: list[tuple[int, str]],
    out: IO[bytes],
    progress: _Progress,
) -> None:
    """Jobs of `job_size` lines, `concurrency` in flight; results are written in input order
    as soon as every earlier job's are, so output streams while later jobs still run."""
    size = args.job_size
    chunks = [lines[i : i + size] for i in range(0, len(lines), size)]
    todo = iter(range(len(chunks)))  # shared by the runners: each takes the next chunk
    finished: dict[int, AsyncJob] = {}
    written = 0

    def write_ready() -> None:
        nonlocal written
        while written in finished:
            job = finished.pop(written)
            for (index, text), row in zip(chunks[written], job.vectors, strict=True):
                line: dict[str, object] = {"index": index, "text": text, "dense": row}
                if args.no_text:
                    del line["text"]
                out.write(_json.dumps(line) + b"\n")
            out.flush()
            written += 1

    async def runner() -> None:
        for k in todo:
            job = await client.submit(args.model, [t for _, t in chunks[k]], _options(args))
            try:
                await job.wait(args.timeout)
            except BaseException:
                if not job.done:  # failing or interrupted: do not leave the job queued
                    with contextlib.suppress(LoraqError):
                        await job.cancel()
                raise
            finished[k] = job
            progress.job_done(len(chunks[k]))
            write_ready()

    runners = [asyncio.create_task(runner()) for _ in range(min(args.concurrency, len(chunks)))]
    try:
        await asyncio.gather(*runners)
    finally:
        for task in runners:
            task.cancel()
        await asyncio.gather(*runners, return_exceptions=True)


@_reports_errors
def _encode(args: argparse.Namespace) -> int:
    lines = _read_lines(args.file)
    jobs = -(-len(lines) // args.job_size)
    progress = _Progress(len(lines), jobs, sys.stderr)

    async def run() -> None:
        async with AsyncLoraqClient(args.url, api_key=args.api_key) as client:
            await _encode_lines(client, args, lines, sys.stdout.buffer, progress)

    asyncio.run(run())
    progress.finish()
    return 0


# -- Batches -------------------------------------------------------------------------------------


@contextlib.contextmanager
def _batch_input(path: str) -> Iterator[FileInput]:
    """stdin is spooled to a temporary file (on disk, not in memory) before the upload: the
    upload then has a length, and can be sent again after a 429 or 503, which a pipe cannot."""
    if path != "-":
        yield Path(path)
        return
    with tempfile.TemporaryFile() as spool:
        shutil.copyfileobj(sys.stdin.buffer, spool)
        spool.seek(0)
        yield spool


@_reports_errors
def _batch_submit(args: argparse.Namespace) -> int:
    with _client(args) as client, _batch_input(args.file) as file:
        batch = client.submit_batch(
            file,
            output_format=args.output_format,
            metadata=dict(args.metadata) if args.metadata else None,
            webhook=args.webhook,
        )
        if not args.wait:
            print(batch.id)
            return 0
        # The id before the wait: an interrupted or timed-out wait leaves the batch running.
        print(f"loraq: batch {batch.id} created, waiting", file=sys.stderr)
        batch.wait(args.timeout, args.poll)
    _print_json(batch.data)
    if not batch.ok:
        print(f"loraq: batch {batch.id} ended {batch.status}", file=sys.stderr)
        return 1
    return 0


@_reports_errors
def _batch_status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _print_json(client.batch(args.batch_id).data)
    return 0


@_reports_errors
def _batch_cancel(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _print_json(client.cancel_batch(args.batch_id).data)
    return 0


@_reports_errors
def _batch_download(args: argparse.Namespace) -> int:
    with _client(args) as client:
        batch = client.batch(args.batch_id)
        paths = batch.download(args.dir)
    if not paths:
        print(f"loraq: batch {batch.id} has no files (it is {batch.status})", file=sys.stderr)
        return 1
    for path in paths.values():
        print(path)
    return 0


@_reports_errors
def _batch_list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        batches = client.iter_batches(page_size=min(args.limit, _MAX_PAGE))
        for batch in itertools.islice(batches, args.limit):
            _print_json(batch.data)
    return 0


@_reports_errors
def _batch_lines(args: argparse.Namespace) -> int:
    texts = (text for _, text in _iter_lines(args.file))
    lines = batch_lines(texts, args.model, args.lora_id, args.prefix, args.texts_per_line)
    out = sys.stdout.buffer
    for line in lines:
        out.write(line.encode())
    out.flush()
    return 0


def _metadata_pair(value: str) -> tuple[str, str]:
    key, sep, text = value.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, not {value!r}")
    return key, text


def _add_batch_commands(
    sub: Subcommands, client: argparse.ArgumentParser, texts: argparse.ArgumentParser
) -> None:
    batch = sub.add_parser(
        "batch",
        help="bulk embedding through the Batches API (OpenAI's): lines, submit, status, "
        "cancel, download, list",
    )
    commands = batch.add_subparsers(dest="batch_command", required=True)

    p = commands.add_parser(
        "lines",
        parents=[texts],
        help="texts (one per line) as batch input lines on stdout; custom ids count the "
        "lines written, from 0",
    )
    p.add_argument("--prefix", default="line-", help="custom_id prefix (%(default)s)")
    p.add_argument(
        "--texts-per-line", type=_positive, default=1, help="inputs per line (%(default)s)"
    )
    p.set_defaults(func=_batch_lines)

    p = commands.add_parser(
        "submit", parents=[client], help="upload an input file, create a batch, print its id"
    )
    p.add_argument("file", nargs="?", default="-", help="JSONL input lines (default: stdin)")
    p.add_argument("--output-format", choices=["jsonl", "parquet", "npy"], default="jsonl")
    p.add_argument(
        "--metadata", type=_metadata_pair, action="append", metavar="KEY=VALUE", help="repeatable"
    )
    p.add_argument("--webhook", help="URL to call when the batch ends (signed)")
    p.add_argument(
        "--wait",
        action="store_true",
        help="wait for the batch to end, print it as JSON (exit 1 if it failed, expired or "
        f"was cancelled, {EXIT_TIMEOUT} on timeout)",
    )
    p.add_argument("--timeout", type=float, help="seconds to wait (default: no limit)")
    p.add_argument(
        "--poll",
        type=_positive_seconds,
        default=DEFAULT_POLL_S,
        help="most seconds between polls (%(default)s)",
    )
    p.set_defaults(func=_batch_submit)

    p = commands.add_parser("status", parents=[client], help="print a batch as JSON")
    p.add_argument("batch_id")
    p.set_defaults(func=_batch_status)

    p = commands.add_parser("cancel", parents=[client], help="cancel a batch, print it as JSON")
    p.add_argument("batch_id")
    p.set_defaults(func=_batch_cancel)

    p = commands.add_parser(
        "download",
        parents=[client],
        help="write a batch's output, error and ids files, print their paths (exit 1 if it "
        "has none)",
    )
    p.add_argument("batch_id")
    p.add_argument("--dir", default=".", help="where to write them (default: here)")
    p.set_defaults(func=_batch_download)

    p = commands.add_parser(
        "list", parents=[client], help="print batches as JSON lines, newest first"
    )
    p.add_argument("--limit", type=_positive, default=20, help="at most this many (%(default)s)")
    p.set_defaults(func=_batch_list)


@_reports_errors
def _adapters_push(args: argparse.Namespace) -> int:
    with _client(args) as client:
        try:
            adapter = client.push_adapter(args.source, args.name, model=args.model)
        except ValueError as exc:  # not an adapter directory or archive
            print(f"loraq: {exc}", file=sys.stderr)
            return 1
    _print_json(adapter)
    return 0


@_reports_errors
def _adapters_ls(args: argparse.Namespace) -> int:
    with _client(args) as client:
        for adapter in client.iter_adapters(page_size=_MAX_PAGE):
            print(f"{adapter['id']}\t{adapter['latest']}\t{'pinned' if adapter['pinned'] else ''}")
    return 0


@_reports_errors
def _adapters_action(args: argparse.Namespace) -> int:
    with _client(args) as client:
        actions: dict[str, Callable[[str], dict[str, Any]]] = {
            "show": client.adapter,
            "rm": client.delete_adapter,
            "pin": client.pin_adapter,
            "unpin": client.unpin_adapter,
            "share": lambda name: client.share_adapter(name, args.tenants),
        }
        _print_json(actions[args.adapters_command](args.name))
    return 0


def command_group(sub: Subcommands, name: str, help_text: str) -> Subcommands:
    """The subcommands of `loraq <name>`, made by whoever asks first: the server adds
    `adapters demo` to the client's `adapters` commands this way."""
    parser = sub.choices.get(name)
    if parser is None:
        parser = sub.add_parser(name, help=help_text)
        return parser.add_subparsers(dest=f"{name}_command", required=True)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    raise ValueError(f"loraq {name} is a command, not a group of them")


def _add_adapter_commands(sub: Subcommands, client: argparse.ArgumentParser) -> None:
    commands = command_group(
        sub, "adapters", "the adapter registry: push, ls, show, rm, pin, unpin, share"
    )

    p = commands.add_parser(
        "push",
        parents=[client],
        help="upload a PEFT adapter directory (or a .tar/.tar.gz/.zip of one) as a new "
        "revision; print the adapter as JSON",
    )
    p.add_argument("source", help="the adapter's directory, or an archive of it")
    p.add_argument("--name", required=True, help="<your tenant>/<name>")
    p.add_argument("--model", help="the base model it is for (default: the gateway's first)")
    p.set_defaults(func=_adapters_push)

    p = commands.add_parser(
        "ls", parents=[client], help="list adapters: id, latest revision, pinned"
    )
    p.set_defaults(func=_adapters_ls)

    helps = {
        "show": "print an adapter as JSON (revisions, rank, targets, jobs, warm workers)",
        "rm": "delete an adapter: new jobs are refused, jobs in flight finish",
        "pin": "keep the adapter's latest revision loaded on its model's workers",
        "unpin": "let the adapter be evicted like any other",
        "share": "let these tenants use the adapter (replaces the former list)",
    }
    for command, text in helps.items():
        p = commands.add_parser(command, parents=[client], help=text)
        p.add_argument("name", help="org/name")
        if command == "share":
            p.add_argument("tenants", nargs="*", help="tenants (none: share with nobody)")
        p.set_defaults(func=_adapters_action)


def _client_parser() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--url",
        default=os.environ.get("LORAQ_URL", DEFAULT_URL),
        help=f"gateway URL (default: $LORAQ_URL, else {DEFAULT_URL})",
    )
    parent.add_argument(
        "--api-key",
        default=os.environ.get("LORAQ_API_KEY"),
        help="API key, sent as a Bearer token (default: $LORAQ_API_KEY)",
    )
    return parent


def add_client_commands(sub: Subcommands) -> None:
    client = _client_parser()
    texts = argparse.ArgumentParser(add_help=False)
    texts.add_argument("--model", required=True)
    texts.add_argument("--lora-id", help="adapter to apply (default: the base model)")
    texts.add_argument(
        "--file", default="-", help="texts, one per line; blank lines skipped (default: stdin)"
    )

    p = sub.add_parser("submit", parents=[client, texts], help="submit one job, print its id")
    p.add_argument("--webhook", help="URL to call when the job ends (signed)")
    p.set_defaults(func=_submit)

    p = sub.add_parser("get", parents=[client], help="print a job as JSON")
    p.add_argument("job_id")
    p.set_defaults(func=_get)

    p = sub.add_parser(
        "wait",
        parents=[client],
        help="wait for a job to end, print it as JSON (exit 1 if it failed or was cancelled, "
        f"{EXIT_TIMEOUT} on timeout)",
    )
    p.add_argument("job_id")
    p.add_argument("--timeout", type=float, help="seconds (default: no limit)")
    p.set_defaults(func=_wait)

    p = sub.add_parser("cancel", parents=[client], help="cancel a job, print it as JSON")
    p.add_argument("job_id")
    p.set_defaults(func=_cancel)

    p = sub.add_parser(
        "encode",
        parents=[client, texts],
        help="encode many texts through concurrent jobs; JSON lines "
        '{"index", "text", "dense"} on stdout, in input order',
    )
    p.add_argument("--job-size", type=_positive, default=64, help="texts per job (%(default)s)")
    p.add_argument("--concurrency", type=_positive, default=4, help="jobs in flight (%(default)s)")
    p.add_argument("--timeout", type=float, help="seconds to wait for each job (default: none)")
    p.add_argument("--no-text", action="store_true", help="leave the text out of each line")
    p.set_defaults(func=_encode)

    _add_batch_commands(sub, client, texts)
    _add_adapter_commands(sub, client)


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {number}")
    return number


def _positive_seconds(value: str) -> float:
    seconds = float(value)
    if not seconds > 0:  # NaN too
        raise argparse.ArgumentTypeError(f"must be more than 0, not {value}")
    return seconds


def installed_commands() -> list[AddCommands]:
    """The `loraq.commands` entry points. One that fails to load is reported and skipped: a
    broken server install must not take the client commands down with it."""
    found = []
    for entry in entry_points(group=COMMANDS_GROUP):
        try:
            found.append(entry.load())
        except Exception as exc:
            print(f"loraq: skipping the commands of {entry.value}: {exc!r}", file=sys.stderr)
    return found


def build_parser(extensions: Iterable[AddCommands] | None = None) -> argparse.ArgumentParser:
    """The client commands plus those `extensions` add (by default, the installed ones)."""
    parser = argparse.ArgumentParser(prog="loraq", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)
    add_client_commands(sub)
    for add_commands in installed_commands() if extensions is None else extensions:
        add_commands(sub)
    return parser


def main(argv: list[str] | None = None, extensions: Iterable[AddCommands] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    args = build_parser(extensions).parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
