"""Adapter sources against local directories: the adapter dir, a Hub cache, an S3 bucket."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

import pytest

from common import errors
from common.adapters import revision_key
from common.object_store import LocalObjectStore
from common.settings import AdapterSettings
from worker.adapter_sources import (
    ChainSource,
    HubSource,
    LocalDirSource,
    RegistrySource,
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
    assert [type(s) for s in plain.sources] == [RegistrySource, LocalDirSource]
    remote = AdapterSettings(dir=tmp_path, hub=True, s3_uri="s3://b/p", cache_dir=tmp_path / "c")
    assert remote.remote
    assert [type(s) for s in sources_from_settings(remote).sources] == [
        RegistrySource,
        LocalDirSource,
        HubSource,
        S3Source,
    ]


# -- containment: nothing outside the source's root is served or read --------------------------


def test_symlinked_adapter_dir_outside_the_root_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "adapters"
    outside = write_adapter(tmp_path / "elsewhere" / "secret")
    (root / "org").mkdir(parents=True)
    (root / "org" / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(errors.AdapterOutsideDir) as info:
        LocalDirSource(root).fetch("org/link")
    assert info.value.code == "ADAPTER_OUTSIDE_DIR"
    assert "elsewhere" not in info.value.message


def test_symlinked_config_outside_the_root_is_refused_unread(tmp_path: Path) -> None:
    """The outside file is never opened, so no error can quote a field of it."""
    root = tmp_path / "adapters"
    adapter = write_adapter(root / "org" / "name", {"adapter_model.safetensors": b"weights"})
    outside = tmp_path / "private.json"
    outside.write_text('{"peft_type": "db-password-hunter2"}')
    (adapter / "adapter_config.json").symlink_to(outside)
    with pytest.raises(errors.AdapterOutsideDir, match=r"adapter_config\.json") as info:
        ChainSource([LocalDirSource(root)]).fetch("org/name")
    assert "hunter2" not in info.value.message and "private" not in info.value.message


@pytest.mark.parametrize("name", ["adapter_model.safetensors", "adapter_model.bin"])
def test_symlinked_weights_outside_the_root_are_refused(tmp_path: Path, name: str) -> None:
    root = tmp_path / "adapters"
    adapter = write_adapter(root / "org" / "name", {"adapter_config.json": b"{}"})
    (tmp_path / "big").write_bytes(b"x")
    (adapter / name).symlink_to(tmp_path / "big")
    with pytest.raises(errors.AdapterOutsideDir, match=name):
        LocalDirSource(root).fetch("org/name")


def test_symlink_loop_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "adapters"
    adapter = write_adapter(root / "org" / "name", {"adapter_config.json": b"{}"})
    (adapter / "adapter_model.safetensors").symlink_to(adapter / "adapter_model.bin")
    (adapter / "adapter_model.bin").symlink_to(adapter / "adapter_model.safetensors")
    with pytest.raises(errors.AdapterOutsideDir):
        LocalDirSource(root).fetch("org/name")


def test_links_inside_the_root_are_served(tmp_path: Path) -> None:
    """An adapter id aliasing another, and a root that is itself a symlink."""
    real_root = tmp_path / "volume"
    write_adapter(real_root / "org" / "v2")
    (real_root / "org" / "latest").symlink_to(real_root / "org" / "v2", target_is_directory=True)
    root = tmp_path / "adapters"
    root.symlink_to(real_root, target_is_directory=True)
    found = LocalDirSource(root).fetch("org/latest")
    assert found == root / "org" / "latest"
    assert (found / "adapter_model.safetensors").read_bytes() == b"weights"


def test_hub_snapshot_links_to_its_blobs_are_served(tmp_path: Path) -> None:
    """huggingface_hub's own layout: snapshot files are symlinks into the repo's blobs."""
    snapshot = hub_cache(tmp_path / "hub", "org/legal-lora")
    blobs = snapshot.parent.parent / "blobs"
    blobs.mkdir()
    for name in FILES:
        blob = blobs / hashlib.sha256(FILES[name]).hexdigest()
        (snapshot / name).rename(blob)
        (snapshot / name).symlink_to(blob)
    found = HubSource(tmp_path / "hub", offline=True).fetch("org/legal-lora")
    assert found is not None
    assert (found / "adapter_model.safetensors").read_bytes() == b"weights"
    # ...but not a snapshot file pointing out of the Hub cache.
    (snapshot / "adapter_model.safetensors").unlink()
    (snapshot / "adapter_model.safetensors").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "elsewhere").write_bytes(b"x")
    with pytest.raises(errors.AdapterOutsideDir):
        HubSource(tmp_path / "hub", offline=True).fetch("org/legal-lora")


# -- the registry's revisions (org/name@<hash>) -------------------------------------------------


def test_registry_revisions_come_from_the_store_and_are_cached(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "store")
    revision = "0123456789abcdef"
    for name, data in FILES.items():
        with store.open_write(revision_key("org/med", revision, name)) as out:
            out.write(data)
    source = RegistrySource(store, tmp_path / "cache")
    assert source.fetch("org/med") is None  # no revision: another source's id
    found = source.fetch(f"org/med@{revision}")
    assert found == tmp_path / "cache" / "registry" / "org" / "med" / revision
    assert {p.name: p.read_bytes() for p in found.iterdir()} == FILES
    store.delete_prefix(revision_key("org/med", revision))
    assert source.fetch(f"org/med@{revision}") == found  # immutable: the cached copy serves
    source.drop(f"org/med@{revision}")
    assert not found.exists()
    with pytest.raises(errors.AdapterNotFound):
        source.fetch(f"org/med@{revision}")
    assert [p.name for p in found.parent.iterdir()] == []  # no scratch left behind
