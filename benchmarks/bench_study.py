"""A study's pilot group against a plain-JAX anchor at the same shapes (issue 24).

The pilot group: ReLU RNN (orthogonal W_s) on adding T = 100, H = 32, batch 32, Adam, 40 members
(8 learning rates x 5 seeds) in one vmapped program. *Ours* is ``loop.Loop`` itself, its
steady-state step measured as the difference of two whole group runs (``steps`` and
``2 steps``, evaluation and spectra off), so compiling, set-up and the final evaluation cancel.
The *anchor* is what a JAX user would write by hand: an Elman ReLU cell in ``lax.scan``,
``optax.adam`` with the learning rate injected per member, ``jax.vmap`` over the 40 members,
one jitted step. GFLOP/s counts the matmuls only: per member and step, the forward pass is
B T (H^2 + D H) + B H multiply-adds, the backward pass about twice that, 2 FLOPs each.
"""

from __future__ import annotations

import shutil
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rnn_spectra.config import default_config
from rnn_spectra.loop import Loop

T, H, B, D, MEMBERS = 100, 32, 32, 2, 40
LRS = np.geomspace(1e-4, 1e-2, 8)


def _configs(steps: int):
    out = []
    for i in range(MEMBERS):
        c = default_config()
        c.seed = i // len(LRS)
        c.task.name, c.task.seq_len = "adding", T
        c.model.cell, c.model.hidden_size, c.model.recurrent_init = "relu_rnn", H, "orthogonal"
        c.optim.name, c.optim.learning_rate = "adam", float(LRS[i % len(LRS)])
        c.train.steps, c.train.batch_size = steps, B
        c.train.eval_every = c.train.log_every = steps
        c.train.eval_batches, c.train.eval_batch_size, c.train.progress = 1, 32, False
        c.spectral.every, c.checkpoint.every_steps = 0, 0
        out.append(c)
    return out


def _ours(steps: int) -> float:
    tmp = tempfile.mkdtemp()
    try:
        t0 = time.perf_counter()
        Loop(_configs(steps), [f"{tmp}/m{i}" for i in range(MEMBERS)], f"{tmp}/g", test_chunks=1).run()
        return time.perf_counter() - t0
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

    return jax.jit(jax.vmap(step)), jax.vmap(init)


def _anchor(steps: int) -> float:
    step, init = _anchor_step()
    keys = jax.random.split(jax.random.PRNGKey(0), MEMBERS)
    p, s = init(keys, jnp.asarray(np.tile(LRS, MEMBERS // len(LRS)), jnp.float32))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.random((MEMBERS, B, T, D)), jnp.float32)
    y = jnp.asarray(rng.random((MEMBERS, B, 1)), jnp.float32)
    p, s, loss = step(p, s, x, y)  # compile
    jax.block_until_ready(loss)
    t0 = time.perf_counter()
    for _ in range(steps):
        p, s, loss = step(p, s, x, y)
    jax.block_until_ready(loss)
    return (time.perf_counter() - t0) / steps


def run(quick: bool) -> list[dict]:
    steps = 20 if quick else 100
    ours = (_ours(2 * steps) - _ours(steps)) / steps  # per step: set-up and compile cancel
    anchor = _anchor(steps)
    flops = 3 * 2 * (B * T * (H * H + D * H) + B * H)  # per member and step
    rows = []
    for name, t in (("ours (loop.Loop, vmapped group)", ours), ("plain-JAX anchor", anchor)):
        rows += [{"name": f"{name}: step", "value": 1e3 * t, "unit": "ms"},
                 {"name": f"{name}: throughput", "value": MEMBERS / t, "unit": "member*steps/s"},
                 {"name": f"{name}: matmul GFLOP/s", "value": MEMBERS * flops / t / 1e9,
                  "unit": "GFLOP/s"}]
    rows.append({"name": "ours / anchor", "value": ours / anchor, "unit": "x (step time)",
                 "target": "<= 1.1"})
    return rows
