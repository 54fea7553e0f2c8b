"""A study's pilot group against a plain-JAX anchor at the same shapes (issue 24).

The pilot group: ReLU RNN (orthogonal W_s) on adding T = 100, H = 32, batch 32, Adam, 40 members
(8 learning rates x 5 seeds) in one vmapped program. Four step times, side by side in one
process:

- the *anchor*, what a JAX user would write by hand: an Elman ReLU cell in ``lax.scan``,
  ``optax.adam`` with the learning rate injected per member, ``jax.vmap`` over the 40 members,
  one jitted step on one pre-made batch;
- the same anchor *drawing its batch in the step* (``AddingTask.batch`` from each member's key),
  as ours does: what the data costs, apart from the rest of our step;
- *our step*: the compiled train step ``loop.Loop`` runs (``Loop._compile``; it draws its batch
  inside the step, from the step's key), called in a tight loop;
- *our loop*: ``loop.Loop.run`` itself, its steady-state step read from its own metrics rows
  (the wall time of the train row at step 2N minus the one at step N, over N steps: everything
  the loop does per step, no set-up, no compile).

Each time is the median of alternated repetitions. The *set-up* rows are the rest of a whole
group run (wall time less its steps): the first group in a process pays JAX's and Flax's
one-time costs (each eager op of the members' init compiled once), a later one does not. An
earlier version took the loop's step as the difference of two whole runs (2N steps, then N); the
first of them paid that one-time set-up, which came out as a per-step cost (2.05x the anchor).

GFLOP/s counts the matmuls only: per member and step, the forward pass is B T (H^2 + D H) + B H
multiply-adds, the backward pass about twice that, 2 FLOPs each.
"""

from __future__ import annotations

import json
import shutil
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rnn_spectra.config import default_config
from rnn_spectra.loop import Loop
from rnn_spectra.tasks.adding import AddingTask
from rnn_spectra.train import init_state

T, H, B, D, MEMBERS = 100, 32, 32, 2, 40
LRS = np.geomspace(1e-4, 1e-2, 8)


def _configs(steps: int, log_every: int | None = None):
    out = []
    for i in range(MEMBERS):
        c = default_config()
        c.seed = i // len(LRS)
        c.task.name, c.task.seq_len = "adding", T
        c.model.cell, c.model.hidden_size, c.model.recurrent_init = "relu_rnn", H, "orthogonal"
        c.optim.name, c.optim.learning_rate = "adam", float(LRS[i % len(LRS)])
        c.train.steps, c.train.batch_size = steps, B
        c.train.eval_every, c.train.log_every = steps, log_every or steps
        c.train.eval_batches, c.train.eval_batch_size, c.train.progress = 1, 32, False
        c.spectral.every, c.checkpoint.every_steps = 0, 0
        out.append(c)
    return out


def _loop(steps: int) -> tuple[float, float]:
    """One whole group run of 2 ``steps`` steps: (its wall time, its steady-state step)."""
    tmp = tempfile.mkdtemp()
    try:
        t0 = time.perf_counter()
        Loop(_configs(2 * steps, steps), [f"{tmp}/m{i}" for i in range(MEMBERS)], f"{tmp}/g",
             test_chunks=1).run()
        wall = time.perf_counter() - t0
        with open(f"{tmp}/m0/metrics.jsonl") as f:
            at = {r["step"]: r["wall_time"] for r in map(json.loads, f) if r["split"] == "train"}
        return wall, (at[2 * steps] - at[steps]) / steps
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _our_step():
    """(step, state): the compiled step ``Loop`` trains with and the group's initial state."""
    tmp = tempfile.mkdtemp()
    try:
        loop = Loop(_configs(1), [f"{tmp}/m{i}" for i in range(MEMBERS)], f"{tmp}/g")
        state = loop.stacking.stack([init_state(m.exp, m.run.seed) for m in loop.members])
        return loop._compile()[0], state
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _anchor_step():
    def loss_fn(p, x, y):
        def cell(h, xt):
            h = jax.nn.relu(xt @ p["W_x"] + h @ p["W_s"] + p["b"])
            return h, None
        h, _ = jax.lax.scan(cell, jnp.zeros((x.shape[0], H)), jnp.swapaxes(x, 0, 1))
        return jnp.mean((h @ p["W_o"] + p["b_o"] - y) ** 2)

    opt = optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)

    def step(p, s, x, y):
        loss, g = jax.value_and_grad(loss_fn)(p, x, y)
        upd, s = opt.update(g, s, p)
        return optax.apply_updates(p, upd), s, loss

    def init(key, lr):
        k1, k2, k3 = jax.random.split(key, 3)
        p = {"W_x": jax.random.normal(k1, (D, H)) / np.sqrt(D),
             "W_s": jax.nn.initializers.orthogonal()(k2, (H, H)),
             "b": jnp.zeros(H), "W_o": jax.random.normal(k3, (H, 1)) / np.sqrt(H), "b_o": jnp.zeros(1)}
        s = opt.init(p)
        s.hyperparams["learning_rate"] = lr
        return p, s

    def drawn(p, s, key):  # the same step on a fresh adding batch drawn from the member's key
        key, k = jax.random.split(key)
        x, y = AddingTask(seq_len=T).batch(k, B)
        p, s, loss = step(p, s, x, y)
        return p, s, key, loss

    return jax.jit(jax.vmap(step)), jax.vmap(init), jax.jit(jax.vmap(drawn))


def _anchor(draw: bool = False):
    """A function timing ``steps`` anchor steps (seconds per step), warmed up. ``draw``: each
    step draws its batch inside the program, as ours does, instead of reusing one made before."""
    step, init, drawn = _anchor_step()
    keys = jax.random.split(jax.random.PRNGKey(0), MEMBERS)
    carry = list(init(keys, jnp.asarray(np.tile(LRS, MEMBERS // len(LRS)), jnp.float32))) + [keys]
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.random((MEMBERS, B, T, D)), jnp.float32)
    y = jnp.asarray(rng.random((MEMBERS, B, 1)), jnp.float32)

    def one():
        if draw:
            carry[0], carry[1], carry[2], loss = drawn(carry[0], carry[1], carry[2])
        else:
            carry[0], carry[1], loss = step(carry[0], carry[1], x, y)
        return loss

    return _tight(one)


def _ours():
    step, state = _our_step()
    carry = [state]

    def one():
        carry[0], metrics = step(carry[0])
        return metrics

    return _tight(one)


def _tight(one):
    jax.block_until_ready(one())  # compile

    def time_steps(steps: int) -> float:
        t0 = time.perf_counter()
        for _ in range(steps):
            out = one()
        jax.block_until_ready(out)
        return (time.perf_counter() - t0) / steps

    return time_steps


def run(quick: bool) -> list[dict]:
    steps, reps = (20, 2) if quick else (100, 7)
    times = {"anchor": [], "drawn": [], "step": [], "loop": []}
    setup, timers = [], {}
    for _ in range(reps):  # alternated, so a drift of the machine's speed hits all four alike
        wall, per_step = _loop(steps)  # the first is the first group in the process
        times["loop"].append(per_step)
        setup.append(wall - 2 * steps * per_step)
        timers = timers or {"anchor": _anchor(), "drawn": _anchor(draw=True), "step": _ours()}
        for key, timer in timers.items():
            times[key].append(timer(steps))
    t = {k: statistics.median(v) for k, v in times.items()}
    flops = 3 * 2 * (B * T * (H * H + D * H) + B * H)  # per member and step
    rows = []
    for key, name in (("anchor", "plain-JAX anchor"), ("drawn", "anchor drawing its batch in the step"),
                      ("step", "ours, jitted step alone"),
                      ("loop", "ours, loop.Loop")):
        rows += [{"name": f"{name}: step", "value": 1e3 * t[key], "unit": "ms"},
                 {"name": f"{name}: throughput", "value": MEMBERS / t[key], "unit": "member*steps/s"},
                 {"name": f"{name}: matmul GFLOP/s", "value": MEMBERS * flops / t[key] / 1e9,
                  "unit": "GFLOP/s"}]
    rows += [{"name": "ours loop / anchor", "value": t["loop"] / t["anchor"], "unit": "x (step time)",
              "target": "<= 1.1"},
             {"name": "ours step / anchor", "value": t["step"] / t["anchor"], "unit": "x (step time)"},
             {"name": "ours step / anchor drawing its batch", "value": t["step"] / t["drawn"],
              "unit": "x (step time)"},
             {"name": "anchor drawing its batch / anchor", "value": t["drawn"] / t["anchor"],
              "unit": "x (step time)"},
             {"name": "ours loop / ours step", "value": t["loop"] / t["step"], "unit": "x (step time)"},
             {"name": "group set-up, first in the process", "value": setup[0], "unit": "s"},
             {"name": "group set-up, later (median)", "value": statistics.median(setup[1:]),
              "unit": "s"}]
    return rows
