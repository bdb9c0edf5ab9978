"""Adapter sources against local directories: the adapter dir, a Hub cache, an S3 bucket."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

import pytest

from common import errors
from common.settings import AdapterSettings
from worker.adapter_sources import (
    ChainSource,
    HubSource,
    LocalDirSource,
    S3Source,
    sources_from_settings,
)

FILES = {"adapter_config.json": b'{"peft_type": "LORA"}', "adapter_model.safetensors": b"weights"}


def write_adapter(path: Path, files: dict[str, bytes] = FILES) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (path / name).write_bytes(data)
    return path


def test_local_and_chain_sources(tmp_path: Path) -> None:
    root = tmp_path / "adapters"
    write_adapter(root / "org" / "name")
    local = LocalDirSource(root)
    assert local.fetch("org/name") == root / "org" / "name"
    assert local.fetch("org/missing") is None
    chain = ChainSource([LocalDirSource(tmp_path / "empty"), local])
    assert chain.fetch("org/name") == root / "org" / "name"
    with pytest.raises(errors.AdapterNotFound):
        chain.fetch("org/missing")
    with pytest.raises(errors.InvalidLoraId):
        chain.fetch("../etc")


def hub_cache(root: Path, repo_id: str, revision: str = "a" * 40) -> Path:
    """A Hugging Face cache laid out as huggingface_hub writes it, for one model repo."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    return write_adapter(repo / "snapshots" / revision)


def test_hub_source_serves_from_its_cache(tmp_path: Path) -> None:
    snapshot = hub_cache(tmp_path / "hub", "org/legal-lora")
    source = HubSource(tmp_path / "hub", offline=True)
    found = source.fetch("org/legal-lora")
    assert found is not None
    assert found.resolve() == snapshot.resolve()
    assert (found / "adapter_model.safetensors").read_bytes() == b"weights"
    assert source.fetch("org/not-cached") is None
    with pytest.raises(errors.InvalidLoraId):
        source.fetch("../../etc")


class LocalBucket:
    """boto3's S3 client surface, over a local directory (bucket = first path part)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.downloads: list[str] = []

    def _path(self, bucket: str, key: str) -> Path:
        return self.root / bucket / key

    def head_object(self, *, Bucket: str, Key: str) -> dict[str, Any]:
        path = self._path(Bucket, Key)
        if not path.is_file():
            error = Exception("Not Found")
            error.response = {"Error": {"Code": "404"}}  # type: ignore[attr-defined]
            raise error
        return {"ETag": hashlib.md5(path.read_bytes()).hexdigest()}

    def download_file(self, Bucket: str, Key: str, Filename: str) -> None:
        self.downloads.append(Key)
        shutil.copyfile(self._path(Bucket, Key), Filename)


def test_s3_source_downloads_once_and_refreshes_on_change(tmp_path: Path) -> None:
    bucket = LocalBucket(tmp_path / "s3")
    write_adapter(tmp_path / "s3" / "models" / "loras" / "org" / "med")
    source = S3Source("s3://models/loras", tmp_path / "cache", client=bucket)

    found = source.fetch("org/med")
    assert found == tmp_path / "cache" / "s3" / "org" / "med"
    assert (found / "adapter_config.json").read_bytes() == FILES["adapter_config.json"]
    assert sorted(bucket.downloads) == [
        "loras/org/med/adapter_config.json",
        "loras/org/med/adapter_model.safetensors",
    ]

    assert source.fetch("org/med") == found
    assert len(bucket.downloads) == 2, "an unchanged adapter is served from the disk cache"

    (
        tmp_path / "s3" / "models" / "loras" / "org" / "med" / "adapter_model.safetensors"
    ).write_bytes(b"v2")
    assert (source.fetch("org/med") / "adapter_model.safetensors").read_bytes() == b"v2"  # type: ignore[operator]
    assert source.fetch("org/absent") is None


def test_s3_source_reports_an_unreachable_bucket(tmp_path: Path) -> None:
    class Broken(LocalBucket):
        def head_object(self, *, Bucket: str, Key: str) -> dict[str, Any]:
            raise ConnectionError("endpoint unreachable")

    source = S3Source("s3://models", tmp_path / "cache", client=Broken(tmp_path))
    with pytest.raises(errors.AdapterSourceUnavailable):
        source.fetch("org/med")


def test_sources_from_settings(tmp_path: Path) -> None:
    plain = sources_from_settings(AdapterSettings(dir=tmp_path))
    assert [type(s) for s in plain.sources] == [LocalDirSource]
    remote = AdapterSettings(dir=tmp_path, hub=True, s3_uri="s3://b/p", cache_dir=tmp_path / "c")
    assert remote.remote
    assert [type(s) for s in sources_from_settings(remote).sources] == [
        LocalDirSource,
        HubSource,
        S3Source,
    ]
