"""Step-time overhead of the spectrum-steering interventions (issue #15), as ratios to the plain
train step measured in the same process: the Lyapunov regulariser at k = 1, 8, 32 applied every
step and every 10th step, the svd_margin parametrisation of W_s, and the singular-value
projection after every update. tanh RNN on the adding task at B=64, T=200, H=128 (``--quick``:
B=16, T=50, H=32). Runners alternate in rounds and the ratios are of medians. Timed under one
BLAS thread for XLA:CPU's LAPACK calls, as the training loop runs them (``control.lapack_threads``).

    python -m benchmarks.run --only bench_control [--quick]
    python -m benchmarks.bench_control [--quick]      # this file alone, prints its rows
"""

from __future__ import annotations

import statistics
import sys


from benchmarks import script_main
from benchmarks.bench_train_step import JaxRunner, jax_device_label, time_rounds
from rnn_spectra.backend import single_threaded_blas

SHAPE, QUICK_SHAPE = (64, 200, 128), (16, 50, 32)  # (B, T, H)
CELL = "tanh_rnn"


def variants(hidden: int) -> dict[str, dict]:
    """name -> config overrides; "plain" is the reference."""
    out = {"plain": {}}
    for k in (1, 8, 32):
        if k <= hidden:
            for every in (1, 10):
                out[f"lyapunov k={k} every={every}"] = {
                    "control.lyapunov.weight": 1.0, "control.lyapunov.k": k,
                    "control.lyapunov.every": every}
    out["svd_margin m=0.1"] = {"model.recurrent_param": "svd_margin", "model.margin": 0.1}
    out["projection s=1"] = {"control.max_singular_value": 1.0}
    return out


def run(quick: bool) -> list[dict]:
    batch, seq_len, hidden = QUICK_SHAPE if quick else SHAPE
    runners = {name: JaxRunner(CELL, batch, seq_len, hidden, overrides=o)
               for name, o in variants(hidden).items()}
    # every=10: a 10-step call covers one regularised step and nine plain ones.
    with single_threaded_blas():
        raw = time_rounds(runners, steps=10, rounds=3 if quick else 5)
    med = {k: statistics.median(v) for k, v in raw.items()}
    shape = f"{CELL} B={batch} T={seq_len} H={hidden}, {jax_device_label()}"
    rows = [{"name": "plain step", "value": med["plain"] * 1e3,
             "unit": f"ms per train step (median), {shape}"}]
    for name, t in med.items():
        if name != "plain":
            spread = (max(raw[name]) - min(raw[name])) / med[name]
            rows.append({"name": name, "value": t / med["plain"],
                         "unit": f"step time / plain step (medians; spread {spread:.0%}), {shape}"})
    return rows


def main(argv=None) -> int:
    return script_main(run, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
