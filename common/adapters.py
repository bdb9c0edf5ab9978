"""Where an adapter lives in the adapter directory: `<dir>/<org>/<name>/` (PEFT's save layout)."""

from __future__ import annotations

from pathlib import Path

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PICKLE_FILE = "adapter_model.bin"


def adapter_path(root: Path, lora_id: str) -> Path:
    return root / lora_id


def exists_locally(root: Path, lora_id: str) -> bool:
    return (adapter_path(root, lora_id) / CONFIG_FILE).is_file()
