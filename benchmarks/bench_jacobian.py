"""Spectral measurements: speed of all-lags Jacobian products against the naive way, the Lyapunov
spectrum at k = n = 256, and the training overhead of the spectral monitor.

1. ``dh_T/dh_t`` for every t of a relu_rnn (T=500, n=128): ours (one scan for the trajectory,
   ``jacfwd`` of one step vmapped over time, reverse cumulative product) vs the naive way,
   ``jax.jacfwd`` of the whole remaining unroll once per t. The naive cost of t grows with T - t,
   so it is timed on evenly spaced t and extrapolated to all T (the row says on how many).
   Target: >= 50x on CPU.
2. ``lyapunov_spectrum`` with k = n = 256, T = 2000 (tanh_rnn): seconds, both paths.
3. Monitor overhead at the default ``spectral.every`` on the default adding run (T=100, H=128,
   batch 64, the default 1000 steps): the cost of one measurement and of setting up the monitor
   (probe batch, trace, compile), against the train-step time, measured side by side; modelled
   for the whole run, and in full mode also measured end to end (two real runs, spectral on vs
   off). Target: < 10%. Beside it, one measurement of the exact monitor (SVD step norms, full
   spectrum on every probe) against the default one (Lanczos step norms, full spectrum on the
   first probe: above n = 96), tanh and LSTM at H = 128, alternated in one process.

    python -m benchmarks.run --only bench_jacobian [--quick]
    python -m benchmarks.bench_jacobian [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from rnn_spectra import config as config_lib
from rnn_spectra.config import ModelConfig
from rnn_spectra.model import SequenceModel
from rnn_spectra.spectral import jacobian_products, lyapunov_spectrum, make_step_fn, step_jacobians
from rnn_spectra.tasks import get_task

TARGET_SPEEDUP = 50.0
TARGET_OVERHEAD = 0.10


def _time(fn, *args, repeats: int = 3) -> float:
    """Median wall seconds of ``fn(*args)`` after one warm-up (compile) call."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _cell(cell: str, hidden: int, seq_len: int, seed: int = 0):
    task = get_task(config_lib.TaskConfig("adding", seq_len))
    model = SequenceModel(ModelConfig(cell=cell, hidden_size=hidden), task.input_size,
                          task.output_size, task.readout)
    params = model.init(jax.random.PRNGKey(seed))
    inputs, _ = task.batch(jax.random.PRNGKey(seed + 1), 1)
    return make_step_fn(model, params["cell"]), inputs[0]


def bench_products(quick: bool) -> list[dict]:
    T, n = 500, 128
    cs, xs = _cell("relu_rnn", n, T)
    ours = jax.jit(lambda xs: jacobian_products(step_jacobians(cs.step_fn, cs.s0, xs)))
    ours_assoc = jax.jit(lambda xs: jacobian_products(step_jacobians(cs.step_fn, cs.s0, xs), "associative"))
    t_ours = _time(ours, xs)
    t_assoc = _time(ours_assoc, xs, repeats=1 if quick else 3)

    states = jax.jit(lambda xs: jax.lax.scan(lambda s, x: (cs.step_fn(s, x),) * 2, cs.s0, xs)[1])(xs)
    states = jnp.concatenate([cs.s0[None], states])

    @jax.jit
    def naive_one(s_t, t):
        # jacfwd of the unroll from step t to T: forward mode goes through the dynamic-length loop.
        unroll = lambda s: jax.lax.fori_loop(t, T, lambda u, s: cs.step_fn(s, xs[u]), s)  # noqa: E731
        return jax.jacfwd(unroll)(s_t)

    ts = np.unique(np.linspace(0, T - 1, 8 if quick else 25).round().astype(int))
    jax.block_until_ready(naive_one(states[0], 0))  # compile once; t is a traced argument
    check = naive_one(states[ts[-1]], int(ts[-1]))
    np.testing.assert_allclose(check, ours(xs)[ts[-1]], rtol=1e-3, atol=1e-4)  # same numbers
    t0 = time.perf_counter()
    for t in ts:
        jax.block_until_ready(naive_one(states[t], int(t)))
    t_naive = (time.perf_counter() - t0) / len(ts) * T
    ratio = t_naive / t_ours
    meta = {"T": T, "n": n, "cell": "relu_rnn"}
    return [
        {"name": "jacobian_products/ours_scan", "value": t_ours, "unit": "s", **meta},
        {"name": "jacobian_products/ours_associative", "value": t_assoc, "unit": "s", **meta},
        {"name": "jacobian_products/naive_jacfwd_per_t", "value": t_naive, "unit": "s",
         "note": f"timed on {len(ts)} evenly spaced t of {T}, extrapolated to all {T}", **meta},
        {"name": "jacobian_products/speedup", "value": ratio, "unit": "x", "target": f">= {TARGET_SPEEDUP:g}",
         "ok": bool(ratio >= TARGET_SPEEDUP), **meta},
    ]


def bench_lyapunov(quick: bool) -> list[dict]:
    T, n = 2000, 256
    cs, xs = _cell("tanh_rnn", n, T)
    rows = []
    for method in ("jacobian",) if quick else ("jacobian", "jvp"):
        fn = jax.jit(lambda xs, m=method: lyapunov_spectrum(cs.step_fn, cs.s0, xs, k=n, method=m))
        seconds = _time(fn, xs, repeats=1 if quick else 3)
        lam = np.asarray(fn(xs))
        rows.append({"name": f"lyapunov/k256_n256_T2000/{method}", "value": seconds, "unit": "s",
                     "T": T, "n": n, "k": n, "cell": "tanh_rnn", "lambda_1": float(lam[0]),
                     "lambda_median": float(np.median(lam))})
    return rows


def _adding_config(every: int, steps: int):
    c = config_lib.default_config()
    c.task.name, c.task.seq_len = "adding", 100
    c.model.cell, c.model.hidden_size = "tanh_rnn", 128
    c.train.steps, c.train.progress = steps, False
    c.spectral.every = every
    return c


def bench_monitor(quick: bool) -> list[dict]:
    from rnn_spectra.spectral.monitor import SpectralMonitor
    from rnn_spectra.train import build, init_state, make_train_step

    every_default = config_lib.default_config().spectral.every
    steps_default = config_lib.default_config().train.steps
    exp = build(config_lib.resolve(_adding_config(every_default, steps_default)))
    state = init_state(exp, 0)
    step = jax.jit(make_train_step(exp))
    t0 = time.perf_counter()
    monitor = SpectralMonitor(exp)
    monitor.measure(state["params"], 0)
    t_first = time.perf_counter() - t0
    # Alternate train-step blocks and measurements so load changes hit both alike.
    steps_t, meas_t = [], []
    jax.block_until_ready(step(state))
    for _ in range(2 if quick else 5):
        t0 = time.perf_counter()
        for _ in range(20):
            state, _ = step(state)
        jax.block_until_ready(state)
        steps_t.append((time.perf_counter() - t0) / 20)
        t0 = time.perf_counter()
        monitor.measure(state["params"], 1)
        meas_t.append(time.perf_counter() - t0)
    t_step, t_meas = statistics.median(steps_t), statistics.median(meas_t)
    compile_s = max(t_first - t_meas, 0.0)
    n_meas = steps_default // every_default + 1 if every_default else 0
    modelled = (n_meas * t_meas + compile_s) / (steps_default * t_step) if every_default else 0.0
    meta = {"every": every_default, "steps": steps_default, "cell": "tanh_rnn", "T": 100, "H": 128}
    rows = [
        {"name": "monitor/train_step", "value": t_step, "unit": "s", **meta},
        {"name": "monitor/one_measurement", "value": t_meas, "unit": "s", **meta},
        {"name": "monitor/compile", "value": compile_s, "unit": "s", **meta},
        {"name": "monitor/overhead_modelled", "value": modelled, "unit": "fraction",
         "note": f"({n_meas} measurements + set-up) / ({steps_default} train steps), evals excluded; "
                 "an upper bound: the run loop compiles the monitor while it trains",
         "target": f"< {TARGET_OVERHEAD:g}", "ok": bool(modelled < TARGET_OVERHEAD), **meta},
    ]
    rows += _measurement_exact_vs_cheap(2 if quick else 5)
    for every in (25, 50, 100, 200):  # what other defaults would cost, from the same timings
        n_c = steps_default // every + 1
        rows.append({"name": f"monitor/overhead_modelled_every{every}",
                     "value": (n_c * t_meas + compile_s) / (steps_default * t_step), "unit": "fraction",
                     "note": f"{n_c} measurements + compile over {steps_default} steps", **meta})
    if not quick and every_default:
        # Whole runs, each in a fresh process, alternating off / on; medians of 5. Cold: an empty
        # persistent compilation cache per process (a shape's first run). Warm: a cache filled
        # by a run of the same shape before, as the CLI has by default (later seeds, resumes).
        import tempfile

        cache = tempfile.mkdtemp()
        for label, warm in (("cold", False), ("warm", True)):
            walls = {every_default: [], 0: []}
            if warm:
                for every in (0, every_default):
                    _whole_run_subprocess(every, steps_default, cache)
            for every in (0, every_default) * 5:
                walls[every].append(_whole_run_subprocess(
                    every, steps_default, cache if warm else tempfile.mkdtemp()))
            on, off = statistics.median(walls[every_default]), statistics.median(walls[0])
            measured = on / off - 1.0
            rows.append({"name": f"monitor/overhead_measured_{label}_cache", "value": measured,
                         "unit": "fraction",
                         "note": f"train_and_evaluate wall time in fresh processes, {label} "
                                 f"compilation cache, spectral.every={every_default} vs 0: "
                                 f"{on:.1f}s vs {off:.1f}s (median of 5 each)",
                         "target": f"< {TARGET_OVERHEAD:g}", "ok": bool(measured < TARGET_OVERHEAD),
                         **meta})
    return rows


def _measurement_exact_vs_cheap(repeats: int) -> list[dict]:
    """Seconds of one measurement at H = 128 (tanh: n = 128; LSTM: n = 256), T = 100, 4 probes:
    the exact monitor (SVD step norms, full spectrum on every probe: every measurement before
    issue #24) against the default one above ``EXACT_MAX``, alternated in one process."""
    from rnn_spectra.spectral.monitor import SpectralMonitor
    from rnn_spectra.train import build, init_state

    rows = []
    for cell in ("tanh_rnn", "lstm"):
        c = _adding_config(200, 1000)
        c.model.cell = cell
        exp = build(config_lib.resolve(c))
        params = init_state(exp, 0)["params"]
        monitors = {"exact": SpectralMonitor(exp, exact=True), "default": SpectralMonitor(exp)}
        times = {name: [] for name in monitors}
        for m in monitors.values():
            m.host_arrays(params)  # compile
        for _ in range(repeats):
            for name, m in monitors.items():
                t0 = time.perf_counter()
                m.host_arrays(params)
                times[name].append(time.perf_counter() - t0)
        ratios = [e / d for e, d in zip(times["exact"], times["default"])]
        meta = {"cell": cell, "H": 128, "T": 100, "probes": 4}
        rows += [{"name": f"monitor/{cell}/one_measurement_{name}", "value": statistics.median(t),
                  "unit": "s", **meta} for name, t in times.items()]
        rows.append({"name": f"monitor/{cell}/exact_over_default", "value": statistics.median(ratios),
                     "unit": "x", "note": f"paired ratios {[round(r, 2) for r in ratios]}", **meta})
    return rows


def _whole_run_subprocess(every: int, steps: int, cache_dir: str) -> float:
    """Seconds of one ``train_and_evaluate`` of the default adding run, in a fresh interpreter
    using the persistent compilation cache in ``cache_dir`` (as ``rnn-spectra`` does)."""
    import subprocess

    code = ("import json, os, sys, tempfile, time; from benchmarks.bench_jacobian import _adding_config; "
            "from rnn_spectra.loop import train_and_evaluate; w = tempfile.mkdtemp(); t0 = time.perf_counter(); "
            f"train_and_evaluate(_adding_config({every}, {steps}), os.path.join(w, 'run')); "
            "print(json.dumps(time.perf_counter() - t0))")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": cache_dir,
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.5"}
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                         check=True, env=env)
    return float(out.stdout.strip().splitlines()[-1])


def run(quick: bool) -> list[dict]:
    return bench_products(quick) + bench_lyapunov(quick) + bench_monitor(quick)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", choices=["products", "lyapunov", "monitor"], default=None)
    args = parser.parse_args()
    fns = {"products": bench_products, "lyapunov": bench_lyapunov, "monitor": bench_monitor}
    for row in (fns[args.only](args.quick) if args.only else run(args.quick)):
        print(json.dumps(row), flush=True)
    sys.exit(0)
