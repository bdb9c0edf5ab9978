"""Where adapters come from: the registry's store for revisions of uploaded adapters
(`org/name@<hash>`), else the adapter directory, then optionally the Hugging Face Hub or S3.

Remote sources download into the local disk cache (`adapters.cache_dir`) and serve later loads
from there, so a worker that restarts or evicts an adapter from memory does not fetch it again. A
source answers None when it does not have the adapter; the chain answers `ADAPTER_NOT_FOUND` when
none has it, and `ADAPTER_SOURCE_UNAVAILABLE` when a remote source could not be asked. What a
source answers is contained in its root (`contained`), links resolved.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from common.adapters import (
    CONFIG_FILE,
    PICKLE_FILE,
    WEIGHTS_FILE,
    adapter_path,
    exists_locally,
    revision_key,
    split_revision,
)
from common.errors import AdapterNotFound, AdapterOutsideDir, AdapterSourceUnavailable
from common.object_store import ObjectStore, open_store
from common.settings import AdapterSettings

log = logging.getLogger(__name__)

ADAPTER_FILES = (CONFIG_FILE, WEIGHTS_FILE, PICKLE_FILE)


def contained(root: Path, found: Path, lora_id: str) -> Path:
    """`found`, once it and each adapter file in it resolve inside `root`.

    Following a symlink out of the root would serve, and quote in error messages, files nobody
    published as an adapter. Links that stay inside (one adapter id aliasing another, the Hub
    cache's snapshot-to-blob links) are fine. The message names no target: it reaches clients.
    """
    top = root.resolve()
    entries = [(found, "its directory")]
    entries += [(found / name, name) for name in ADAPTER_FILES if os.path.lexists(found / name)]
    for entry, what in entries:
        try:
            inside = entry.resolve().is_relative_to(top)
        except (OSError, RuntimeError):  # a symlink loop
            inside = False
        if not inside:
            raise AdapterOutsideDir(
                f"adapter {lora_id!r}: {what} resolves outside the adapter directory"
            )
    return found


class AdapterSource(Protocol):
    def fetch(self, lora_id: str) -> Path | None:
        """A local directory holding the adapter's files, or None if this source lacks it."""


class LocalDirSource:
    """`<root>/<org>/<name>/`: the adapter directory, e.g. a mounted volume."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def fetch(self, lora_id: str) -> Path | None:
        if not exists_locally(self.root, lora_id):
            return None
        return contained(self.root, adapter_path(self.root, lora_id), lora_id)


class HubSource:
    """A Hugging Face Hub (or a mirror at `endpoint`); `huggingface_hub` keeps its own cache
    under `cache_dir`, and with `offline` serves only what that cache already holds."""

    def __init__(
        self, cache_dir: Path, endpoint: str | None = None, token: str | None = None,
        offline: bool = False,
    ) -> None:  # fmt: skip
        self.cache_dir, self.endpoint, self.token, self.offline = (
            cache_dir,
            endpoint,
            token,
            offline,
        )

    def fetch(self, lora_id: str) -> Path | None:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (
            EntryNotFoundError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
        )

        try:
            path = snapshot_download(
                repo_id=lora_id,
                allow_patterns=list(ADAPTER_FILES),
                cache_dir=self.cache_dir,
                endpoint=self.endpoint,
                token=self.token,
                local_files_only=self.offline,
            )
        except (RepositoryNotFoundError, EntryNotFoundError):
            return None
        except LocalEntryNotFoundError:
            if self.offline:
                return None
            raise AdapterSourceUnavailable(
                f"the hub could not be reached for {lora_id!r}"
            ) from None
        except OSError as exc:
            raise AdapterSourceUnavailable(f"hub download of {lora_id!r} failed: {exc}") from exc
        found = Path(str(path))
        if not (found / CONFIG_FILE).is_file():
            return None
        return contained(self.cache_dir, found, lora_id)


class S3Client(Protocol):
    """The part of boto3's S3 client this source uses."""

    def head_object(self, *, Bucket: str, Key: str) -> dict[str, Any]: ...

    def download_file(self, Bucket: str, Key: str, Filename: str) -> None: ...


class S3Source:
    """`s3://bucket/prefix/<org>/<name>/`, downloaded into `cache_dir/s3/<org>/<name>/`. A cached
    copy is reused while the objects' ETags are unchanged, so an adapter re-uploaded under the
    same id is fetched again (and gets a new content hash)."""

    def __init__(self, uri: str, cache_dir: Path, client: S3Client | None = None) -> None:
        if not uri.startswith("s3://"):
            raise ValueError(f"not an s3:// URI: {uri!r}")
        bucket, _, prefix = uri.removeprefix("s3://").partition("/")
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.cache_dir = cache_dir / "s3"
        self._client = client

    @property
    def client(self) -> S3Client:
        if self._client is None:
            import boto3  # optional dependency: pip install 'loraq[s3]'

            self._client = boto3.client("s3")
        return self._client

    def _key(self, lora_id: str, name: str) -> str:
        return "/".join(p for p in (self.prefix, lora_id, name) if p)

    def _etags(self, lora_id: str) -> dict[str, str] | None:
        etags = {}
        for name in ADAPTER_FILES:
            try:
                head = self.client.head_object(Bucket=self.bucket, Key=self._key(lora_id, name))
            except Exception as exc:
                if _is_missing(exc):
                    continue
                raise AdapterSourceUnavailable(f"S3 lookup of {lora_id!r} failed: {exc}") from exc
            etags[name] = str(head.get("ETag", ""))
        return etags if CONFIG_FILE in etags else None

    def fetch(self, lora_id: str) -> Path | None:
        etags = self._etags(lora_id)
        if etags is None:
            return None
        target = self.cache_dir / lora_id
        stamp = target / ".etags.json"
        if stamp.is_file() and json.loads(stamp.read_text()) == etags:
            return contained(self.cache_dir, target, lora_id)
        target.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
        try:
            for name in etags:
                self.client.download_file(
                    self.bucket, self._key(lora_id, name), str(scratch / name)
                )
            (scratch / ".etags.json").write_text(json.dumps(etags))
            shutil.rmtree(target, ignore_errors=True)
            scratch.rename(target)
        except Exception as exc:
            shutil.rmtree(scratch, ignore_errors=True)
            raise AdapterSourceUnavailable(f"S3 download of {lora_id!r} failed: {exc}") from exc
        return contained(self.cache_dir, target, lora_id)


def _is_missing(exc: Exception) -> bool:
    response = getattr(exc, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    return code in ("404", "NoSuchKey", "NotFound") or isinstance(exc, FileNotFoundError)


class RegistrySource:
    """Revisions of uploaded adapters (`org/name@<hash>`, what the gateway puts in a job's
    message), from the registry's store into `cache_dir/registry/<org>/<name>/<hash>/`. A
    revision never changes, so a cached copy is good until the revision is deleted (`drop`).
    Ids without a revision are other sources' business; a revision the store lacks is not
    looked for anywhere else."""

    def __init__(self, objects: ObjectStore, cache_dir: Path) -> None:
        self.objects = objects
        self.cache_dir = cache_dir / "registry"

    def _target(self, name: str, revision: str) -> Path:
        return self.cache_dir / name / revision

    def fetch(self, lora_id: str) -> Path | None:
        name, revision = split_revision(lora_id)
        if revision is None:
            return None
        target = self._target(name, revision)
        if (target / CONFIG_FILE).is_file() and (target / WEIGHTS_FILE).is_file():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{revision}."))
        try:
            for file in (CONFIG_FILE, WEIGHTS_FILE):
                key = revision_key(name, revision, file)
                with self.objects.open_read(key) as source, (scratch / file).open("wb") as sink:
                    shutil.copyfileobj(source, sink)
            shutil.rmtree(target, ignore_errors=True)
            scratch.rename(target)
        except FileNotFoundError:
            raise AdapterNotFound(f"adapter {lora_id!r} not found (deleted?)") from None
        except Exception as exc:
            raise AdapterSourceUnavailable(
                f"the adapter store could not be read for {lora_id!r}: {exc}"
            ) from exc
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return target

    def drop(self, lora_id: str) -> None:
        """Forget a deleted revision's cached copy."""
        name, revision = split_revision(lora_id)
        if revision is not None:
            shutil.rmtree(self._target(name, revision), ignore_errors=True)


class ChainSource:
    def __init__(self, sources: Iterable[AdapterSource]) -> None:
        self.sources = list(sources)

    def fetch(self, lora_id: str) -> Path:
        for source in self.sources:
            if (path := source.fetch(lora_id)) is not None:
                return path
        raise AdapterNotFound(f"adapter {lora_id!r} not found")


def sources_from_settings(settings: AdapterSettings) -> ChainSource:
    registry = RegistrySource(open_store(settings.store, settings.s3_endpoint), settings.cache_dir)
    sources: list[AdapterSource] = [registry, LocalDirSource(settings.dir)]
    if settings.hub:
        token = settings.hub_token.get_secret_value() if settings.hub_token else None
        sources.append(HubSource(settings.cache_dir / "hub", settings.hub_endpoint, token))
    if settings.s3_uri:
        sources.append(S3Source(settings.s3_uri, settings.cache_dir))
    return ChainSource(sources)
