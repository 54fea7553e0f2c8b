"""Fixed points of a ReLU RNN (Sussillo & Barak 2013): the optimiser at n = 128 and the exact
enumeration of activation patterns, on CPU.

The model: relu_rnn, H = 128, orthogonal init, trained briefly with Adam on the adding task
(T = 50) so its state space has structure (a fresh model's states all flow to h = 0 and every
candidate converges there, which measures nothing). Candidates: states along 16 test sequences
plus Gaussian noise (0.01).

1. ``find_fixed_points`` from K = 1000 candidates (quick: 200): compile time, total wall time of
   one call (compile included, as a user pays it), the fraction of candidates converged
   (q <= 1e-9) and slow (1e-9 < q <= 1e-4), unique points; with and without the
   Levenberg-Marquardt refinement after Adam, to show what it buys.
2. ``enumerate_relu_fixed_points`` on P = 10, 100, 1000 distinct activation patterns seen along
   the trajectories (quick: 10, 100): seconds, and how many were singular / fixed points.

    python -m benchmarks.run --only bench_fixed_points [--quick]
    python -m benchmarks.bench_fixed_points [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rnn_spectra.model import ModelConfig, SequenceModel
from rnn_spectra.dynamics import make_step_fn
from rnn_spectra.spectral.fixed_points import (
    _minimize,
    candidates_from_trajectories,
    enumerate_relu_fixed_points,
    find_fixed_points,
    patterns_from_states,
)
from rnn_spectra.tasks.adding import AddingTask

H, T = 128, 50


def trained_relu_rnn(train_steps: int, seed: int = 0):
    """(model, params) of a relu_rnn trained ``train_steps`` Adam steps (lr 1e-3, clip 1) on adding."""
    task = AddingTask(seq_len=T)
    model = SequenceModel(ModelConfig(cell="relu_rnn", hidden_size=H, recurrent_init="orthogonal"),
                          task.input_size, task.output_size, task.readout)
    params = model.init(jax.random.PRNGKey(seed))
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))

    @jax.jit
    def step(params, opt_state, key):
        inputs, targets = task.batch(key, 32)
        loss, grads = jax.value_and_grad(lambda p: task.loss(model.apply(p, inputs), targets))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    opt_state = tx.init(params)
    for i in range(train_steps):
        params, opt_state, loss = step(params, opt_state, jax.random.fold_in(jax.random.PRNGKey(seed + 1), i))
    return model, params, task, float(loss)


def bench_finder(model, params, task, num: int, meta: dict) -> tuple[list[dict], np.ndarray]:
    inputs, _ = task.batch(jax.random.PRNGKey(999), 16)
    _, carries = model.unroll(params["cell"], inputs, return_carries=True)
    states = carries.reshape(-1, H)
    cs = make_step_fn(model, params["cell"])
    x = jnp.zeros(cs.input_size)
    cand = candidates_from_trajectories(states, num, 0.01, jax.random.PRNGKey(2))
    rows = []
    for refine in (20, 0):
        label = f"K={num} n={H}" + ("" if refine else " Adam only")
        # The program find_fixed_points runs with its defaults, compiled alone to time compilation.
        run = jax.jit(lambda s0: _minimize(cs.step_fn, x, s0, optax.adam(1e-2), 2000, 100, 1e-9,
                                           refine, 0.01))
        t0 = time.perf_counter()
        run.lower(cand).compile()
        t_compile = time.perf_counter() - t0
        t0 = time.perf_counter()
        fps = find_fixed_points(cs.step_fn, x, cand, refine_steps=refine)
        wall = time.perf_counter() - t0
        rows += [
            {"name": f"find {label}: wall", "value": wall, "unit": "s (one call, compile included)", **meta},
            {"name": f"find {label}: compile", "value": t_compile, "unit": "s", **meta},
            {"name": f"find {label}: converged", "value": float(fps.converged.mean()),
             "unit": "fraction (q <= 1e-9)", **meta},
            {"name": f"find {label}: slow", "value": float(fps.slow.mean()),
             "unit": "fraction (1e-9 < q <= 1e-4)", **meta},
            {"name": f"find {label}: unique fixed points", "value": len(fps.points), "unit": "points",
             "median_q": float(np.median(fps.all_q)), **meta},
        ]
        print(f"   find refine={refine}: {wall:.1f}s, converged {fps.converged.mean():.3f}, "
              f"slow {fps.slow.mean():.3f}", file=sys.stderr, flush=True)
        if refine:
            rows.append(_agreement(params, fps, meta))
    return rows, np.asarray(states)


def _agreement(params, fps, meta: dict) -> dict:
    """Enumerate the patterns of the optimiser's unique fixed points: each should come back exactly."""
    c = {k: np.asarray(v, np.float64) for k, v in params["cell"].items()}
    if len(fps.points) == 0:
        return {"name": "optimiser vs enumeration: max distance", "value": float("nan"),
                "unit": "state units", "note": "no fixed points found", **meta}
    pats = patterns_from_states(fps.points, c["W_s"], c["W_x"], c["b"], np.zeros(c["W_x"].shape[0]))
    res = enumerate_relu_fixed_points(c["W_s"], c["W_x"], c["b"], np.zeros(c["W_x"].shape[0]), pats)
    norms = np.linalg.norm(fps.points, axis=1)
    dist = [float(np.min(np.linalg.norm(res.points - p, axis=1))) if len(res.points) else float("inf")
            for p in fps.points]
    return {"name": "optimiser vs enumeration: max distance", "value": max(dist), "unit": "state units",
            "note": f"{len(fps.points)} optimiser fixed points, {len(res.points)} enumerated from their "
                    f"{len(pats)} patterns; |h*| {np.round(norms, 3).tolist()[:5]}",
            **meta}


def bench_enumeration(params, states, sizes, meta: dict) -> list[dict]:
    c = {k: np.asarray(v, np.float64) for k, v in params["cell"].items()}
    pats = patterns_from_states(states, c["W_s"], c["W_x"], c["b"], np.zeros(c["W_x"].shape[0]))
    pats = pats[np.random.default_rng(0).permutation(len(pats))]
    rows = []
    for p in sizes:
        if p > len(pats):
            print(f"   only {len(pats)} distinct patterns; skipping P={p}", file=sys.stderr)
            continue
        enumerate_relu_fixed_points(c["W_s"], c["W_x"], c["b"], np.zeros(2), pats[:2])  # warm BLAS
        t0 = time.perf_counter()
        res = enumerate_relu_fixed_points(c["W_s"], c["W_x"], c["b"], np.zeros(2), pats[:p])
        dt = time.perf_counter() - t0
        rows.append({"name": f"enumerate P={p} H={H}", "value": dt, "unit": "s",
                     "ms_per_pattern": 1e3 * dt / p, "singular": res.num_singular,
                     "fixed_points": len(res.points), **meta})
        print(f"   enumerate P={p}: {dt:.2f}s, {res.num_singular} singular, {len(res.points)} fixed points",
              file=sys.stderr, flush=True)
    return rows


def run(quick: bool) -> list[dict]:
    train_steps = 100 if quick else 400
    t0 = time.perf_counter()
    model, params, task, loss = trained_relu_rnn(train_steps)
    meta = {"model": f"relu_rnn H={H}, {train_steps} Adam steps on adding T={T} (loss {loss:.3f})",
            "device": jax.devices()[0].device_kind}
    print(f"   trained {train_steps} steps in {time.perf_counter() - t0:.1f}s, loss {loss:.3f}",
          file=sys.stderr, flush=True)
    rows, states = bench_finder(model, params, task, 200 if quick else 1000, meta)
    return rows + bench_enumeration(params, states, (10, 100) if quick else (10, 100, 1000), meta)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    for row in run(args.quick):
        print(json.dumps(row), flush=True)
    sys.exit(0)
