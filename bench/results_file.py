"""How every bench ends: its JSON written under `bench/results/` (unless a smoke run or
`--no-write` says nothing is kept) and printed as the last line, which callers parse."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def publish(result: Mapping[str, Any], out: Path | None) -> None:
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))
