"""The `loraq` command run the way a user runs it, as a process of its own, but on this
interpreter and from this checkout, so it is the code under test that answers."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from loraq.stack import python_cli

REPO = Path(__file__).resolve().parents[1]


def cli(
    *args: str, stdin: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        python_cli(*args), input=stdin, capture_output=True, text=True, timeout=120, cwd=REPO,
        env={**os.environ, **(env or {})},
    )  # fmt: skip
