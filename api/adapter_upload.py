"""An uploaded adapter, from the request's parts to checked files, on worker threads.

The parts (`adapter_config.json` and `adapter_model.safetensors`, or one tar or zip of the
adapter's directory) are streamed into a staging directory on the gateway's disk
(`api.uploads`), an archive is unpacked there, and the files are checked with the rules the
worker loads adapters by (`common.adapter_check`), so an upload is refused with the code a job
would have failed with. Archives are hostile input: members are counted and their sizes bounded
before they are read (a bomb stops at the bound, whatever the archive claims), links, devices
and paths leaving the directory are refused, and only the adapter's own files are written.
"""

from __future__ import annotations

import contextlib
import shutil
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from common.adapter_check import (
    AdapterFiles,
    AdapterRules,
    BaseModelInfo,
    CheckedAdapter,
    check_adapter,
    config_limit,
    read_files,
    too_large,
)
from common.adapters import CONFIG_FILE, PICKLE_FILE, WEIGHTS_FILE
from common.errors import InvalidInput
from common.object_store import LocalObjectStore, Writer

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".zip")
#: Members of an archive looked at, at most: an adapter directory holds a handful of files.
MAX_MEMBERS = 64
_ARCHIVE = "archive"
_WANTED = (CONFIG_FILE, WEIGHTS_FILE, PICKLE_FILE)
_COPY_BYTES = 1024 * 1024


def is_archive(filename: str) -> bool:
    return filename.lower().endswith(ARCHIVE_SUFFIXES)


class Staging:
    """A temporary directory for one upload's parts; `open_part` is `StreamedForm`'s opener."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="loraq-adapter-"))
        self.parts_dir = self.root / "parts"
        self.parts_dir.mkdir()
        self._store = LocalObjectStore(self.parts_dir)
        self.parts: list[str] = []

    def open_part(self, filename: str) -> contextlib.AbstractContextManager[Writer]:
        if filename not in _WANTED and not is_archive(filename):
            raise InvalidInput(
                f"unexpected file {filename[:100]!r}: upload {CONFIG_FILE} and {WEIGHTS_FILE}, "
                f"or one archive of the adapter's directory ({', '.join(ARCHIVE_SUFFIXES)})"
            )
        key = _ARCHIVE if is_archive(filename) else filename
        if key in self.parts:
            raise InvalidInput(f"{filename[:100]!r} is uploaded twice")
        if self.parts and _ARCHIVE in (key, *self.parts):
            raise InvalidInput("upload one archive, or the adapter's files, not both")
        self.parts.append(key)
        return self._store.open_write(key)

    def adapter_dir(self, name: str, rules: AdapterRules, max_upload_bytes: int) -> Path:
        """The directory holding the adapter's files: the parts, or the archive unpacked."""
        parts = self.parts_dir
        if self.parts != [_ARCHIVE]:
            return parts
        out = self.root / "unpacked"
        out.mkdir()
        unpack(name, parts / _ARCHIVE, out, file_limits(rules), max_upload_bytes)
        return out

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def file_limits(rules: AdapterRules) -> dict[str, int]:
    """The bytes each of an adapter's files may have: the worker's limits."""
    return {
        CONFIG_FILE: config_limit(rules),
        WEIGHTS_FILE: rules.max_file_bytes,
        PICKLE_FILE: rules.max_file_bytes,
    }


@dataclass(frozen=True)
class _Member:
    name: str
    size: int
    is_file: bool
    is_link: bool


def unpack(name: str, archive: Path, out: Path, limits: dict[str, int], max_total: int) -> None:
    """The adapter's files of a tar (plain or gzip) or zip archive into `out`, whichever
    directory of it they are in (all in the same one); other regular files are skipped."""
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zipped:
                members = _zip_members(zipped)
                _extract(name, members, lambda m: zipped.open(m.name), out, limits, max_total)
            return
        with tarfile.open(archive, "r:*") as tarred:
            members = _tar_members(tarred)
            _extract(name, members, lambda m: _tar_open(tarred, m.name), out, limits, max_total)
    except (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
        raise InvalidInput(f"the archive is not a readable tar or zip file: {exc}"[:300]) from None


def _zip_members(zipped: zipfile.ZipFile) -> Iterator[_Member]:
    for info in zipped.infolist():
        mode = info.external_attr >> 16
        link = (mode & 0o170000) == 0o120000
        yield _Member(info.filename, info.file_size, not info.is_dir() and not link, link)


def _tar_members(tarred: tarfile.TarFile) -> Iterator[_Member]:
    for info in tarred:
        special = not (info.isfile() or info.isdir())
        yield _Member(info.name, info.size, info.isfile(), special)


def _tar_open(tarred: tarfile.TarFile, name: str) -> IO[bytes]:
    reader = tarred.extractfile(name)
    if reader is None:
        raise InvalidInput(f"archive member {name[:100]!r} is not a regular file")
    return reader


Opener = Callable[[_Member], IO[bytes]]


def _extract(
    name: str,
    members: Iterator[_Member],
    open_member: Opener,
    out: Path,
    limits: dict[str, int],
    max_total: int,
) -> None:
    found: dict[str, str] = {}
    declared = 0
    for count, member in enumerate(members, start=1):
        if count > MAX_MEMBERS:
            raise InvalidInput(f"the archive holds over {MAX_MEMBERS} entries")
        path = _safe_path(member.name)
        if member.is_link:
            raise InvalidInput(
                f"archive member {member.name[:100]!r} is a link or a device; adapters are "
                "regular files"
            )
        declared += member.size
        if declared > max_total:
            raise InvalidInput(f"the archive unpacks to over {max_total} bytes")
        if not member.is_file or path.name not in limits:
            continue
        if path.name in found:
            raise InvalidInput(f"the archive holds {path.name} twice")
        found[path.name] = str(path.parent)
        _copy(name, open_member, member, out / path.name, limits[path.name])
    if len(set(found.values())) > 1:
        raise InvalidInput("the archive's adapter files are in different directories")


def _safe_path(name: str) -> PurePosixPath:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or name.startswith(("/", "\\")):
        raise InvalidInput(f"archive member {name[:100]!r} leaves the adapter's directory")
    return path


def _copy(name: str, open_member: Opener, member: _Member, target: Path, limit: int) -> None:
    """At most `limit` bytes, whatever the member's header claims."""
    if member.size > limit:
        raise too_large(name, target.name, member.size, limit)
    with open_member(member) as source:
        copy_bounded(name, read_blocks(source), target, limit)


def read_blocks(source: IO[bytes]) -> Iterator[bytes]:
    return iter(lambda: source.read(_COPY_BYTES), b"")


def copy_bounded(name: str, blocks: Iterable[bytes], target: Path, limit: int) -> None:
    """The blocks into `target`, refused (`ADAPTER_TOO_LARGE`) as soon as they pass `limit`."""
    written = 0
    with target.open("wb") as sink:
        for block in blocks:
            written += len(block)
            if written > limit:
                raise too_large(name, target.name, written, limit)
            sink.write(block)


def check_upload(
    name: str, directory: Path, base: BaseModelInfo, rules: AdapterRules
) -> tuple[AdapterFiles, CheckedAdapter]:
    """Read and checked exactly as a worker would read and check it (blocking, CPU-bound)."""
    if not (directory / CONFIG_FILE).is_file():
        raise InvalidInput(f"the upload holds no {CONFIG_FILE}")
    files = read_files(name, directory, rules)
    return files, check_adapter(name, files, base, rules)
