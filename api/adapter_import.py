"""Adapters imported by reference instead of uploaded: `hf://org/name[@revision]` (a public repo
of the Hugging Face Hub, or of the mirror at `adapters.hub_endpoint`) and `s3://bucket/prefix`
(only from the buckets in `adapters.import_s3_buckets`). The files land in the upload's staging
directory, each bounded by the worker's limits while it streams, and are then checked and stored
exactly as an upload's (`api.routes.adapters`).

The source is a tenant's words: a Hub repo id is held to the adapter id grammar, a revision to
a short set of characters, and an S3 import reads only allowed buckets, through the object store's
key check. Hub requests carry no token: what the operator's token may read is no tenant's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx

from api.adapter_upload import copy_bounded, file_limits, read_blocks
from common.adapter_check import AdapterRules
from common.adapters import CONFIG_FILE, PICKLE_FILE, WEIGHTS_FILE
from common.errors import (
    AdapterForbidden,
    AdapterNotFound,
    AdapterSourceUnavailable,
    InvalidInput,
    InvalidLoraId,
    LoraqError,
)
from common.object_store import S3ObjectStore, check_key
from common.schemas import validate_lora_id
from common.settings import AdapterSettings

DEFAULT_HUB = "https://huggingface.co"
HUB_TIMEOUT_S = 30.0
_REVISION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,127}")
_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,62}")


@dataclass(frozen=True)
class HubRef:
    repo: str
    revision: str


@dataclass(frozen=True)
class S3Ref:
    bucket: str
    prefix: str


def parse_source(source: str, settings: AdapterSettings) -> HubRef | S3Ref:
    if source.startswith("hf://"):
        if not settings.import_hub:
            raise AdapterForbidden("imports from the Hub are turned off here")
        repo, _, revision = source.removeprefix("hf://").partition("@")
        try:
            validate_lora_id(repo)
        except InvalidLoraId:
            raise InvalidInput(f"not a Hub repo id: {repo[:100]!r}") from None
        revision = revision or "main"
        if "@" in repo or not _REVISION_RE.fullmatch(revision) or ".." in revision:
            raise InvalidInput(f"not a Hub revision: {revision[:100]!r}")
        return HubRef(repo, revision)
    if source.startswith("s3://"):
        bucket, _, prefix = source.removeprefix("s3://").partition("/")
        if not _BUCKET_RE.fullmatch(bucket) or bucket not in settings.import_s3_buckets:
            raise AdapterForbidden(f"adapters may not be imported from bucket {bucket[:64]!r} here")
        prefix = prefix.strip("/")
        try:
            if prefix:
                check_key(prefix)
        except ValueError:
            raise InvalidInput(f"not an S3 prefix: {prefix[:100]!r}") from None
        return S3Ref(bucket, prefix)
    raise InvalidInput("source must be hf://<org>/<name>[@<revision>] or s3://<bucket>/<prefix>")


def fetch(
    name: str, ref: HubRef | S3Ref, out: Path, rules: AdapterRules, settings: AdapterSettings
) -> None:
    """The adapter's files into `out` (blocking); the pickle file only where there is no
    safetensors file, so the check says why the adapter is refused."""
    limits = file_limits(rules)
    fetch_file = _hub_file if isinstance(ref, HubRef) else _s3_file
    if not fetch_file(name, ref, CONFIG_FILE, out, limits[CONFIG_FILE], settings):
        raise AdapterNotFound(f"{_shown(ref)} holds no {CONFIG_FILE} (or does not exist)")
    if not fetch_file(name, ref, WEIGHTS_FILE, out, limits[WEIGHTS_FILE], settings):
        fetch_file(name, ref, PICKLE_FILE, out, limits[PICKLE_FILE], settings)


def _shown(ref: HubRef | S3Ref) -> str:
    if isinstance(ref, HubRef):
        return f"hf://{ref.repo}@{ref.revision}"
    return f"s3://{ref.bucket}/{ref.prefix}"


def _hub_file(
    name: str, ref: HubRef | S3Ref, file: str, out: Path, limit: int, settings: AdapterSettings
) -> bool:
    """The Hub's file API: `<endpoint>/<repo>/resolve/<revision>/<file>`."""
    assert isinstance(ref, HubRef)
    endpoint = (settings.hub_endpoint or DEFAULT_HUB).rstrip("/")
    url = f"{endpoint}/{ref.repo}/resolve/{quote(ref.revision, safe='')}/{file}"
    try:
        with (
            httpx.Client(timeout=HUB_TIMEOUT_S, follow_redirects=True) as client,
            client.stream("GET", url) as response,
        ):
            if response.status_code in (401, 403, 404):  # private repos answer 401
                return False
            if response.status_code != 200:
                raise AdapterSourceUnavailable(
                    f"the Hub answered {response.status_code} for {_shown(ref)}"
                )
            copy_bounded(name, response.iter_bytes(), out / file, limit)
    except httpx.HTTPError as exc:
        raise AdapterSourceUnavailable(f"the Hub could not be reached: {exc}") from exc
    return True


def _s3_file(
    name: str, ref: HubRef | S3Ref, file: str, out: Path, limit: int, settings: AdapterSettings
) -> bool:
    assert isinstance(ref, S3Ref)
    try:
        store = S3ObjectStore(ref.bucket, ref.prefix, endpoint=settings.s3_endpoint)
        with store.open_read(file) as source:
            copy_bounded(name, read_blocks(source), out / file, limit)
    except FileNotFoundError:
        return False
    except LoraqError:  # over a limit
        raise
    except Exception as exc:
        raise AdapterSourceUnavailable(f"S3 could not be read for {_shown(ref)}: {exc}") from exc
    return True
