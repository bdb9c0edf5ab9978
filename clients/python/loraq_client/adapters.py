"""What `push_adapter` sends: a PEFT adapter's directory (its `adapter_config.json` and
`adapter_model.safetensors`) or one archive of it, and the path of an adapter's routes."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
#: Sent only when there is no safetensors file, so the gateway says why it refuses it.
PICKLE_FILE = "adapter_model.bin"
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".zip")


def adapter_parts(source: Path) -> list[tuple[str, Path]]:
    """(filename, path) of each file to upload; ValueError if `source` is no adapter."""
    if source.is_dir():
        weights = WEIGHTS_FILE if (source / WEIGHTS_FILE).is_file() else PICKLE_FILE
        parts = [(name, source / name) for name in (CONFIG_FILE, weights)]
        found = [(name, path) for name, path in parts if path.is_file()]
        if not (source / CONFIG_FILE).is_file():
            raise ValueError(f"{source} holds no {CONFIG_FILE}: not a PEFT adapter directory")
        return found
    if source.is_file() and source.name.lower().endswith(ARCHIVE_SUFFIXES):
        return [(source.name, source)]
    raise ValueError(
        f"{source} is neither an adapter directory nor an archive ({', '.join(ARCHIVE_SUFFIXES)})"
    )


def adapter_route(name: str, action: str = "") -> str:
    """`/v1/adapters/<org>/<name>[/<action>]` for an adapter named `org/name`."""
    org, _, rest = name.partition("/")
    path = f"/v1/adapters/{quote(org, safe='')}/{quote(rest, safe='')}"
    return f"{path}/{action}" if action else path
