"""Where a single model's step time goes: ``model.unroll`` (lax.scan unroll factor) per cell.

On a GPU our train step is bound by a fixed cost per scan iteration (one small kernel launch
chain per time step; see bench_train_step's H200 record), so unrolling k steps into one loop
body should divide that cost by up to k; on CPU it mostly trades compile time for little.
Each row: seconds per step at unroll k, and the speed-up over unroll 1, measured in alternating
rounds in one process. Same numbers whatever k (unrolling does not change the arithmetic).

    python -m benchmarks.run --only bench_unroll [--quick]
"""

from __future__ import annotations

import statistics
import time

from benchmarks.bench_train_step import JaxRunner, jax_device_label, on_gpu, time_rounds

CELLS = ("relu_rnn", "lstm")
UNROLLS = (1, 4, 8, 16)


def run(quick: bool) -> list[dict]:
    shapes = ((16, 50, 32),) if quick else ((64, 200, 128), (16, 1000, 256))
    unrolls = (1, 8) if quick else UNROLLS
    steps, rounds = (3, 2) if quick else ((20, 5) if on_gpu() else (5, 3))
    rows = []
    for cell in CELLS:
        for b, t, h in shapes:
            t0 = time.perf_counter()
            runners = {k: JaxRunner(cell, b, t, h, unroll=k) for k in unrolls}
            times = time_rounds(runners, steps, rounds)
            base = statistics.median(times[1])
            for k in unrolls:
                med = statistics.median(times[k])
                rows.append({"name": f"{cell} B{b} T{t} H{h} unroll={k}", "value": med * 1e3,
                             "unit": f"ms/step [{jax_device_label()}]",
                             "speedup_vs_unroll1": base / med})
            print(f"   {cell} {b},{t},{h}: {time.perf_counter() - t0:.1f}s", flush=True)
    return rows
