"""Where an adapter lives in the adapter directory (`<dir>/<org>/<name>/`, PEFT's save layout),
and how a registry adapter's id names one of its revisions (`org/name@<hash>`)."""

from __future__ import annotations

from pathlib import Path

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PICKLE_FILE = "adapter_model.bin"
#: Hex digits of a revision's hash (`common.adapter_check.content_hash`).
REVISION_CHARS = 16


def adapter_path(root: Path, lora_id: str) -> Path:
    return root / lora_id


def exists_locally(root: Path, lora_id: str) -> bool:
    return (adapter_path(root, lora_id) / CONFIG_FILE).is_file()


def split_revision(lora_id: str) -> tuple[str, str | None]:
    """`org/name@hash` -> (`org/name`, `hash`); an id without a revision -> (id, None)."""
    name, at, revision = lora_id.partition("@")
    return name, revision if at else None


def revision_id(name: str, revision: str) -> str:
    return f"{name}@{revision}"


def revision_key(name: str, revision: str, file: str = "") -> str:
    """Where a registry revision's files live in the adapter store (`adapters.store`)."""
    return "/".join(p for p in ("adapters", name, revision, file) if p)
