"""Run by tests/test_parallel.py in a fresh process with 4 forced CPU devices (the device count
is fixed when a JAX backend starts, so the test suite's own process cannot change it).

    python tests/parallel_worker.py OUT_JSON TMPDIR

Trains the same tiny configs on one device and on the 4-device mesh and writes what the test
compares: metrics rows, final params and summaries of each.
"""

import json
import os
import signal
import sys

os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 4)

import numpy as np  # noqa: E402

from rnn_spectra import config as config_lib  # noqa: E402
from rnn_spectra import workdir as wd  # noqa: E402
from rnn_spectra.checkpointing import Checkpointer  # noqa: E402
from rnn_spectra.loop import Loop  # noqa: E402
from rnn_spectra.train import build, init_state
from rnn_spectra.loop import train_and_evaluate  # noqa: E402


def tiny(seed=0, mode="none", steps=20, cell="relu_rnn", lr=1e-2):
    c = config_lib.default_config()
    c.seed = seed
    c.task.seq_len, c.model.hidden_size, c.model.cell = 10, 8, cell
    c.optim.learning_rate = lr
    c.train.steps, c.train.batch_size = steps, 8
    c.train.eval_every, c.train.eval_batches, c.train.eval_batch_size = 10, 2, 16
    c.train.log_every, c.train.progress = 5, False
    c.spectral.every = 0
    c.checkpoint.every_steps = 10
    c.parallel.mode = mode
    return c


def losses(workdir):
    return [[r["step"], r["split"], r["loss"]] for r in wd.read_jsonl(wd.path(workdir, wd.METRICS))]


def final_params(workdir, config):
    exp = build(config_lib.resolve(config))
    ckpt = Checkpointer(wd.path(workdir, wd.CHECKPOINTS))
    try:
        state, _ = ckpt.restore(init_state(exp, config.seed))
    finally:
        ckpt.close()
    return [np.asarray(x).tolist() for x in jax.tree_util.tree_leaves(state["params"])]


def single_runs(tmp):
    out = {}
    for mode in ("none", "data"):
        w = os.path.join(tmp, f"run_{mode}")
        cfg = tiny(mode=mode, cell="lstm")
        summary = train_and_evaluate(cfg, w)
        out[mode] = {"rows": losses(w), "params": final_params(w, cfg),
                     "parallel": summary["parallel"]}
    return out


def sweeps(tmp):
    """3 members (padded to 4 on the mesh), plus a sharded run interrupted at step 15 and resumed
    on one device: checkpoints do not depend on the device count."""
    out = {}
    for mode in ("none", "sweep"):
        configs = [tiny(seed=s, mode=mode, lr=lr) for s, lr in ((0, 1e-2), (1, 1e-2), (0, 3e-3))]
        dirs = [os.path.join(tmp, f"sweep_{mode}", str(i)) for i in range(3)]
        summaries = Loop(configs, dirs, os.path.join(tmp, f"group_{mode}")).run()
        out[mode] = {"rows": [losses(d) for d in dirs],
                     "test_loss": [s["test"]["loss"] for s in summaries],
                     "parallel": summaries[0]["parallel"]}

    def preempt(name, step, steps, info):
        if step == 15:
            os.kill(os.getpid(), signal.SIGTERM)

    group = os.path.join(tmp, "group_cut")
    dirs = [os.path.join(tmp, "sweep_cut", str(i)) for i in range(3)]
    configs = [tiny(seed=s, mode="sweep", lr=lr) for s, lr in ((0, 1e-2), (1, 1e-2), (0, 3e-3))]
    first = Loop(configs, dirs, group).run(progress=preempt)
    resumed_configs = [tiny(seed=s, mode="none", lr=lr) for s, lr in ((0, 1e-2), (1, 1e-2), (0, 3e-3))]
    second = Loop(resumed_configs, dirs, group).run()
    out["cut"] = {"statuses": [s["status"] for s in first] + [s["status"] for s in second],
                  "rows": [losses(d) for d in dirs]}
    return out


def collectives():
    """Which collectives the compiled steps contain: data parallelism all-reduces gradients, a
    sharded sweep needs none (its members never meet)."""
    from rnn_spectra.parallel import run_layout, sweep_layout
    from rnn_spectra.sweep import stack
    from rnn_spectra.train import make_train_step

    run = config_lib.resolve(tiny(mode="data"))
    exp, layout = build(run), run_layout(run.parallel, 8)
    rep = layout.replicated
    data_hlo = jax.jit(make_train_step(exp, layout=layout), in_shardings=rep, out_shardings=rep) \
        .lower(layout.put(init_state(exp, 0))).compile().as_text()
    layout = sweep_layout(config_lib.resolve(tiny(mode="sweep")).parallel, 8)
    state = layout.put(stack([init_state(exp, s) for s in range(4)]), layout.stacked)
    sweep_hlo = jax.jit(jax.vmap(make_train_step(exp, layout=layout)), in_shardings=layout.stacked,
                        out_shardings=layout.stacked).lower(state).compile().as_text()
    return {name: sorted({op for op in ("all-reduce", "all-gather", "all-to-all",
                                        "collective-permute") if op in hlo})
            for name, hlo in (("data", data_hlo), ("sweep", sweep_hlo))}


def main(out_path, tmp):
    result = {"devices": jax.device_count(), "single": single_runs(tmp), "sweep": sweeps(tmp),
              "collectives": collectives()}
    with open(out_path, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
