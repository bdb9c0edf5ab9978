"""The control-plane benchmark on two revisions of loraq, alternating, on this machine.

Figures of `bench/control_plane.py` move with the machine (a session's host can be a third
faster or slower than the last one), so a change is judged against its base measured here and
now: a git worktree of `--base` and the working tree run the same benchmark arguments in turn,
`--repeat` times each (base, new, base, new, ...), and each figure's median per side is
reported. Both sides run on this checkout's virtual environment; each side's own code is first
on `PYTHONPATH`, in every process it starts.

    python bench/control_plane_ab.py --base 406b922 -- --skip floor --modes async encode

Prints a short table and one JSON line; `--out FILE` also writes the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SIDES = ("base", "new")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--base", required=True, help="the git revision to compare against")
    p.add_argument("--repeat", type=int, default=3, help="runs per side")
    p.add_argument("--out", type=Path)
    p.add_argument("bench_args", nargs="*", help="arguments of bench/control_plane.py (after --)")
    return p.parse_args(argv)


def run_once(tree: Path, bench_args: Sequence[str]) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    argv = [sys.executable, str(tree / "bench" / "control_plane.py"), "--no-write", *bench_args]
    done = subprocess.run(argv, cwd=tree, env=env, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"the benchmark failed in {tree}:\n{done.stderr[-3000:]}")
    return dict(json.loads(lines[-1]))


def figures(result: Mapping[str, Any]) -> Iterator[tuple[str, float]]:
    """Every figure worth comparing, by a stable name."""
    for row in result.get("control_plane", []):
        name = f"{row['mode']} {row['items_per_job']}"
        for process, ms in row["cpu_ms_per_job"].items():
            yield f"{name} {process} ms", ms
        yield f"{name} jobs/s", row["jobs_per_s"]
    for drain in result.get("drain", []):
        name = f"drain {drain['items_per_job']}"
        yield f"{name} gpu_busy", drain["gpu_busy"]
        for process, ms in drain["cpu_ms_per_job"].items():
            yield f"{name} {process} ms", ms
    if (floor := result.get("floor")) is not None:
        for process, ms in floor["cpu_ms_per_task"].items():
            yield f"floor {process} ms", ms
    if (ceiling := result.get("cluster_ceiling")) is not None:
        yield "ceiling h200 workers fed", ceiling["h200_workers_fed"]


def compare(runs: Mapping[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    seen: dict[str, dict[str, list[float]]] = {}
    for side, results in runs.items():
        for result in results:
            for name, value in figures(result):
                seen.setdefault(name, {s: [] for s in SIDES})[side].append(value)
    return {
        name: {
            **{f"{side}_median": statistics.median(v) if v else None for side, v in by.items()},
            **by,
        }
        for name, by in seen.items()
    }


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="loraq-ab-") as tmp:
        base = Path(tmp) / "base"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base), args.base],
            check=True,
            capture_output=True,
        )
        try:
            trees = {"base": base, "new": ROOT}
            runs: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
            for i in range(args.repeat):
                for side in SIDES:
                    print(f"[ab] {side} run {i + 1}/{args.repeat}", file=sys.stderr, flush=True)
                    runs[side].append(run_once(trees[side], args.bench_args))
        finally:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)],
                check=False,
                capture_output=True,
            )
    table = compare(runs)
    print(f"{'figure':<32}{'base':>10}{'new':>10}")
    for name, row in table.items():
        base_m, new_m = row["base_median"], row["new_median"]
        print(f"{name:<32}{base_m if base_m is not None else '-':>10}{new_m:>10}")
    out = {"bench": "control_plane_ab", "base": args.base, "repeat": args.repeat,
           "bench_args": args.bench_args, "figures": table}  # fmt: skip
    line = json.dumps(out)
    print(line)
    if args.out is not None:
        args.out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
