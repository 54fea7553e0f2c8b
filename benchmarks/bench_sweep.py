"""Sweeps compile once: S members as one vmapped program vs S separate runs, side by side.

Two figures per S (1, 4, 16):
* steady-state throughput (models x steps / s) of the vmapped train step vs the single-model
  train step run S times in sequence (both compiled beforehand);
* end to end, S = 16 only outside quick mode: ``SweepGroup.run`` (one compile) vs 16 calls of
  ``train_and_evaluate`` (one compile each), as a user would launch them.
Target (issue 5): the vmapped sweep of 16 at least 4x faster than 16 sequential runs.
"""

from __future__ import annotations

import shutil
import tempfile
import time

import jax

from rnn_spectra.config import default_config
from rnn_spectra.loop import Loop
from rnn_spectra.sweep import stack
from rnn_spectra import config as config_lib
from rnn_spectra.train import build, init_state, make_train_step
from rnn_spectra.loop import train_and_evaluate


def _config(seed: int, steps: int):
    c = default_config()
    c.seed = seed
    c.task.name, c.task.seq_len = "adding", 100
    c.model.cell, c.model.hidden_size, c.model.recurrent_init = "relu_rnn", 64, "orthogonal"
    c.train.steps, c.train.batch_size = steps, 32
    c.train.eval_every = c.train.log_every = steps
    c.train.eval_batches, c.train.eval_batch_size, c.train.progress = 1, 128, False
    return c


def _time(fn, repeats: int) -> float:
    fn()  # compile / warm up
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats


def run(quick: bool) -> list[dict]:
    rows = []
    steps = 10 if quick else 30
    exp = build(config_lib.resolve(_config(0, steps)))
    single = jax.jit(make_train_step(exp))
    vmapped = jax.jit(jax.vmap(make_train_step(exp)))
    for s in (1, 4, 16):
        states = [init_state(exp, seed) for seed in range(s)]
        stacked = stack(states)

        def run_vmapped():
            st = stacked
            for _ in range(steps):
                st, m = vmapped(st)
            jax.block_until_ready(m)

        def run_sequential():
            for st in states:
                for _ in range(steps):
                    st, m = single(st)
                jax.block_until_ready(m)

        t_v, t_s = _time(run_vmapped, 1), _time(run_sequential, 1)
        rows += [
            {"name": f"vmapped S={s}", "value": s * steps / t_v, "unit": "models*steps/s"},
            {"name": f"sequential S={s}", "value": s * steps / t_s, "unit": "models*steps/s"},
            {"name": f"speed-up S={s}", "value": t_s / t_v, "unit": "x (sequential / vmapped)",
             "target": ">= 4 at S=16" if s == 16 else None},
        ]
    if not quick:
        tmp = tempfile.mkdtemp()
        try:
            configs = [_config(seed, 200) for seed in range(16)]
            t0 = time.perf_counter()
            Loop(configs, [f"{tmp}/sweep/{i}" for i in range(16)], f"{tmp}/group",
                       test_chunks=1).run()
            t_group = time.perf_counter() - t0
            t0 = time.perf_counter()
            for i, c in enumerate(configs):
                train_and_evaluate(c, f"{tmp}/alone/{i}")
            t_alone = time.perf_counter() - t0
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        rows += [
            {"name": "end-to-end 16 runs x 200 steps: sweep", "value": t_group, "unit": "s"},
            {"name": "end-to-end 16 runs x 200 steps: separate", "value": t_alone, "unit": "s"},
            {"name": "end-to-end speed-up S=16", "value": t_alone / t_group, "unit": "x",
             "target": ">= 4"},
        ]
    return rows
