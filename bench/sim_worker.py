"""A real loraq worker process whose forward pass is a simulated H200 (benchmarks only).

`python bench/sim_worker.py` runs exactly what `loraq worker` runs (`EncodeWorker`: Celery,
task threads, tokenizer, adapter cache, batcher, leases, heartbeats), configured by the same
`LORAQ_*` variables, except that the engine class the worker builds at start-up is replaced here,
from outside, by `SimulatedH200Engine`. Nothing in the production code or its settings can turn the
stand-in on: it exists only in this launcher.

The stand-in loads the configured (tiny) model for everything but the forward: its adapter slots
and base-model description (so adapters load and lease as usual); the worker's tokenizer is not
the engine's, so it is untouched and tokenizing costs what it costs. Its forward sleeps for the
time an H200 needs for that batch (`bench.h200_model`; `time.sleep` releases the GIL, as waiting
on CUDA does; a sleep that a loaded machine ends late is made up by the next one) and returns
float32 vectors of bge-m3's width. Only the worker's batch thread calls `encode`. With
`BENCH_SIM_ENGINE_LOG` set, each forward appends one line to that file: wall-clock start and end,
modelled seconds, rows, padded tokens, adapters (0/1).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.h200_model import BGE_M3_DIMS, H200Timing
from worker.engine import engine as engine_module
from worker.engine.types import Row

#: Not a `LORAQ_` variable: the worker's settings refuse unknown ones, and this is no setting.
LOG_ENV = "BENCH_SIM_ENGINE_LOG"


class SimulatedH200Engine(engine_module.Engine):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.dims = BGE_M3_DIMS
        self.timing = H200Timing()
        vectors = np.random.default_rng(0).standard_normal((256, self.dims), dtype=np.float32)
        self._vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        path = os.environ.get(LOG_ENV)
        self._log = Path(path) if path else None
        self._late = 0.0

    def encode(self, rows: list[Row]) -> np.ndarray:
        lengths = [len(r.tokens) for r in rows]
        lora = any(r.slot is not None for r in rows)
        seconds = self.timing.batch_seconds(lengths, lora)
        started = time.time()
        self._sleep(seconds)
        ended = time.time()
        if self._log is not None:
            fields = (f"{started:.6f}", f"{ended:.6f}", f"{seconds:.6f}", len(rows))
            line = " ".join(map(str, (*fields, len(rows) * max(lengths), int(lora))))
            with self._log.open("a") as log:
                log.write(line + "\n")
        return np.resize(self._vectors, (len(rows), self.dims))

    def _sleep(self, seconds: float) -> None:
        """Sleeps `seconds` on average: a sleep that overran (a loaded machine wakes the thread
        late) is made up by the next one, so the engine's time stays the modelled time, as a GPU's
        would, however busy the cores are. Only the batch thread calls this."""
        owed = seconds - self._late
        if owed <= 0:
            self._late = -owed
            return
        started = time.perf_counter()
        time.sleep(owed)
        self._late = time.perf_counter() - started - owed


def main() -> None:
    # The worker imports its engine class from this module when it starts (worker.encode_worker).
    engine_module.Engine = SimulatedH200Engine  # type: ignore[misc]
    from common.settings import Settings
    from worker.encode_worker import EncodeWorker

    EncodeWorker(Settings()).run()


if __name__ == "__main__":
    main()
