"""py-spy on running servers during one load run, and where each one's Python CPU went.

`py-spy record --nonblocking --gil` reads the target's memory without stopping it, so the
target's own CPU figures stay comparable (py-spy's CPU is its own, on the same cores), and takes
a sample only from the thread holding the GIL: the profile is where Python CPU goes. Work done
with the GIL released (socket waits, torch kernels, a tokenizer's batch encode) is not in it;
without `--gil`, threads blocked in socket calls would count as busy.

Summary per process: the share of samples (a) with a function anywhere on the stack
(inclusive; also restricted to loraq's own code), leaving out the spine of each thread (entry
points and loops that hold nearly every sample of the threads they run in), (b) with it on top
(self), (c) self by top-level package. Stacks are kept raw
(collapsed: one line per stack and its count) beside the summary, for a flame graph.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

_LINE = re.compile(r":\d+\)$")
_REPO = str(Path(__file__).resolve().parents[1]) + "/"
_PATH_MARKERS = ("site-packages/", _REPO)
_STDLIB = re.compile(r"^.*/python3\.\d+/")
_OWN_CODE = ("api/", "worker/", "common/", "bench/")
#: A function in at least this share of the samples of every thread root it appears under is
#: an entry point or a loop, not a cost.
_SPINE = 0.98


class Profilers:
    def __init__(self, out_dir: Path, pids: Mapping[str, int], rate: int = 100) -> None:
        binary = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which(
            "py-spy"
        )
        if binary is None:
            raise RuntimeError("py-spy is not installed (pip install py-spy, or the dev extra)")
        self._out = out_dir
        self._argv = {
            name: [
                binary, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw",
                "--nonblocking", "--gil", "--subprocesses",
                "--output", str(out_dir / f"{name}.collapsed"),
            ]
            for name, pid in pids.items()
        }  # fmt: skip
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self) -> None:
        self._out.mkdir(parents=True, exist_ok=True)
        for name, argv in self._argv.items():
            with (self._out / f"{name}.py-spy.log").open("wb") as log:
                self._procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)

    def stop(self, top: int = 25) -> dict[str, Any]:
        """Stop sampling (py-spy writes its file on SIGINT); summaries per process."""
        for proc in self._procs.values():
            proc.send_signal(signal.SIGINT)
        summaries = {}
        for name, proc in self._procs.items():
            proc.wait(60)
            collapsed = self._out / f"{name}.collapsed"
            if collapsed.exists():
                summaries[name] = summarize(collapsed, top)
                (self._out / f"{name}.summary.txt").write_text(render(name, summaries[name]))
        return summaries


def _function(frame: str) -> str:
    """`name (path:line)` → `name (short path)`: one entry per function, not per line."""
    name, sep, path = _LINE.sub(")", frame).partition(" (")
    if not sep:
        return frame
    for marker in _PATH_MARKERS:
        if marker in path:
            return f"{name} ({path.split(marker, 1)[1]}"
    return f"{name} ({_STDLIB.sub('', path)}"


def _package(function: str) -> str:
    path = function.rpartition(" (")[2].rstrip(")")
    return path.split("/", 1)[0] if "/" in path else path.removesuffix(".py")


def summarize(collapsed: Path, top: int) -> dict[str, Any]:
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    per_root: Counter[str] = Counter()
    under_root: Counter[tuple[str, str]] = Counter()
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [_function(f) for f in stack.split(";") if not f.startswith("process ")]
        if not frames or not count.isdigit():
            continue
        n = int(count)
        per_root[frames[0]] += n
        for function in set(frames):
            inclusive[function] += n
            under_root[function, frames[0]] += n
        own[frames[-1]] += n
    spine = {
        function
        for function in inclusive
        if all(
            under_root[function, root] >= _SPINE * total
            for root, total in per_root.items()
            if under_root[function, root]
        )
    }
    share = 100.0 / max(sum(per_root.values()), 1)
    packages: Counter[str] = Counter()
    for function, n in own.items():
        packages[_package(function)] += n

    def ranked(counts: Counter[str], keep: Callable[[str], bool] = bool) -> list[list[Any]]:
        return [[round(c * share, 1), f] for f, c in counts.most_common() if keep(f)][:top]

    return {
        "samples": sum(per_root.values()),
        "inclusive_pct": ranked(inclusive, lambda f: f not in spine),
        "own_code_inclusive_pct": ranked(
            inclusive, lambda f: f not in spine and _package(f) + "/" in _OWN_CODE
        ),
        "self_pct": ranked(own),
        "self_by_package_pct": ranked(packages),
    }


def render(name: str, summary: Mapping[str, Any]) -> str:
    lines = [f"{name}: {summary['samples']} samples (thread holding the GIL)"]
    for key, title in (
        ("inclusive_pct", "inclusive % (entry points left out)"),
        ("own_code_inclusive_pct", "inclusive %, loraq code"),
        ("self_pct", "self %"),
        ("self_by_package_pct", "self % by package"),
    ):
        lines += ["", title] + [f"{pct:8.1f}  {fn}" for pct, fn in summary[key]]
    return "\n".join(lines) + "\n"
