"""Training pieces: clipping, the logged pre-clip gradient norm, schedules, divergence as a result,
and a tiny LSTM that learns the adding task."""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnn_spectra import config as config_lib
from rnn_spectra.config import OptimConfig
from rnn_spectra.optim import learning_rate, make_clip, make_optimizer, make_schedule, set_hyperparams
from rnn_spectra.train import build, init_state, make_train_step
from rnn_spectra.loop import train_and_evaluate


def _grads(seed=0, scale=10.0):
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    return {"a": scale * jax.random.normal(k1, (5, 7)), "b": {"c": scale * jax.random.normal(k2, (3,))}}


def _np_norm(tree):
    return math.sqrt(sum(float(np.sum(np.asarray(x, np.float64) ** 2)) for x in jax.tree_util.tree_leaves(tree)))


# ----------------------------------------------------------------------------- clipping transforms
@pytest.mark.parametrize("threshold", [0.5, 3.0])
def test_global_norm_clip(threshold):
    clip = make_clip("global_norm", threshold)
    big = _grads(scale=10.0)
    out, _ = clip.update(big, clip.init(big))
    assert _np_norm(out) <= threshold * (1 + 1e-6)
    assert _np_norm(out) == pytest.approx(threshold, rel=1e-5)  # scaled down to the threshold ...
    ratio = np.asarray(out["a"]) / np.asarray(big["a"])
    np.testing.assert_allclose(ratio, ratio.flat[0], rtol=1e-5)  # ... keeping the direction
    small = _grads(scale=1e-3)
    out, _ = clip.update(small, clip.init(small))
    for x, y in zip(jax.tree_util.tree_leaves(out), jax.tree_util.tree_leaves(small)):
        np.testing.assert_array_equal(x, y)  # below the threshold: untouched


def test_value_clip_is_elementwise():
    clip = make_clip("value", 1.0)
    g = _grads(scale=3.0)
    out, _ = clip.update(g, clip.init(g))
    for x, y in zip(jax.tree_util.tree_leaves(out), jax.tree_util.tree_leaves(g)):
        x, y = np.asarray(x), np.asarray(y)
        assert np.all(np.abs(x) <= 1.0)
        np.testing.assert_array_equal(x, np.clip(y, -1.0, 1.0))
        assert np.any(np.abs(y) > 1.0)


def test_none_and_agc_clip():
    g = _grads(scale=3.0)
    none = make_clip("none", 1.0)
    out, _ = none.update(g, none.init(g))
    for x, y in zip(jax.tree_util.tree_leaves(out), jax.tree_util.tree_leaves(g)):
        np.testing.assert_array_equal(x, y)  # bit for bit
    agc = make_clip("agc", 0.01)
    params = jax.tree_util.tree_map(jnp.ones_like, g)
    out, _ = agc.update(g, agc.init(g), params)
    assert _np_norm(out) < _np_norm(g)  # AGC shrinks gradients large relative to the params


# ----------------------------------------------------------------------------- schedules
def _lr_schedule(cfg, total):
    """Learning rate per step as the optimizer applies it: peak (in the state) times the schedule."""
    tx, schedule = make_optimizer(cfg, total)
    state = tx.init({"w": jnp.zeros(3)})
    return lambda t: learning_rate(state, schedule, t)


def test_schedules():
    lr, total, warm = 0.1, 110, 10
    cos = _lr_schedule(OptimConfig(learning_rate=lr, schedule="cosine"), total)
    for t in [0, 30, 55, 110]:
        assert float(cos(t)) == pytest.approx(lr * 0.5 * (1 + math.cos(math.pi * t / total)), abs=1e-7)
    wc = _lr_schedule(OptimConfig(learning_rate=lr, schedule="warmup_cosine", warmup_steps=warm), total)
    assert float(wc(0)) == pytest.approx(0.0, abs=1e-8)
    assert float(wc(5)) == pytest.approx(0.05)
    assert float(wc(warm)) == pytest.approx(lr)
    assert float(wc(60)) == pytest.approx(lr * 0.5 * (1 + math.cos(math.pi * 50 / 100)), abs=1e-7)
    assert float(wc(total)) == pytest.approx(0.0, abs=1e-7)
    wk = _lr_schedule(OptimConfig(learning_rate=lr, schedule="warmup_constant", warmup_steps=warm), total)
    assert [float(wk(t)) for t in (0, 5, 10, 50, 109)] == pytest.approx([0.0, 0.05, lr, lr, lr])
    const = _lr_schedule(OptimConfig(learning_rate=lr), total)
    assert float(make_schedule(OptimConfig(learning_rate=lr, schedule="cosine"), total)(0)) == 1.0
    assert float(const(0)) == float(const(99)) == pytest.approx(lr)


# ----------------------------------------------------------------------------- the train step
def _experiment(tiny_config, **overrides):
    c = tiny_config
    for key, value in overrides.items():
        section, leaf = key.split(".")
        c[section][leaf] = value
    return build(config_lib.resolve(c))


def _reference_grads(exp, params, inputs, targets):
    """Gradient of the loss through a plain Python loop over the cell, independent of the scan."""
    model, task = exp.model, exp.task

    def loss(p):
        carry = model.initial_carry((inputs.shape[0],))
        for t in range(inputs.shape[1]):
            carry, h = model.cell.apply({"params": p["cell"]}, carry, inputs[:, t])
        out = model.head.apply({"params": p["readout"]}, h)
        return task.loss(out, targets)

    return jax.jit(jax.grad(loss))(params)


def test_logged_grad_norm_is_preclip_and_update_is_clipped(tiny_config):
    # SGD with lr 1 and no momentum: the update *is* minus the clipped gradient.
    exp = _experiment(tiny_config, **{"model.cell": "relu_rnn", "optim.name": "sgd",
                                      "optim.momentum": 0.0, "optim.learning_rate": 1.0,
                                      "optim.clip": "global_norm", "optim.clip_value": 1.0})
    step = jax.jit(make_train_step(exp))
    state0 = init_state(exp, 0)
    params0 = jax.tree_util.tree_map(np.asarray, state0["params"])
    inputs, targets = exp.task.train_batch(state0["key"], state0["step"], exp.run.train.batch_size)
    ref = _reference_grads(exp, state0["params"], inputs, targets)
    pre = _np_norm(ref)
    for clip_value in (0.05 * pre, 1e6):  # clipping active, then inactive; the same program
        state = {**state0, "opt_state": set_hyperparams(state0["opt_state"], clip_value=clip_value)}
        new_state, metrics = step(state)
        assert float(metrics["grad_norm"]) == pytest.approx(pre, rel=1e-4)
        delta = jax.tree_util.tree_map(lambda a, b: np.asarray(a, np.float64) - b,
                                       new_state["params"], params0)
        assert _np_norm(delta) == pytest.approx(min(pre, clip_value), rel=1e-4)
        assert _np_norm(delta) <= clip_value * (1 + 1e-5)
        if clip_value > pre:  # unclipped: the update is exactly -grad
            for d, g in zip(jax.tree_util.tree_leaves(delta), jax.tree_util.tree_leaves(ref)):
                np.testing.assert_allclose(d, -np.asarray(g), rtol=1e-4, atol=1e-7)
        assert int(new_state["step"]) == 1 and int(new_state["diverged_at"]) == -1


def test_value_clip_in_the_step(tiny_config):
    exp = _experiment(tiny_config, **{"model.cell": "tanh_rnn", "optim.name": "sgd",
                                      "optim.momentum": 0.0, "optim.learning_rate": 1.0,
                                      "optim.clip": "value", "optim.clip_value": 1e-3})
    state = init_state(exp, 0)
    params0 = jax.tree_util.tree_map(np.asarray, state["params"])
    new_state, metrics = jax.jit(make_train_step(exp))(state)
    delta = jax.tree_util.tree_map(lambda a, b: np.asarray(a, np.float64) - b, new_state["params"], params0)
    biggest = max(float(np.max(np.abs(d))) for d in jax.tree_util.tree_leaves(delta))
    assert biggest <= 1e-3 * (1 + 1e-4)
    assert biggest == pytest.approx(1e-3, rel=1e-4)  # some entry was clipped
    assert float(metrics["grad_norm"]) > 1e-3


def test_step_logs_learning_rate_of_the_schedule(tiny_config):
    exp = _experiment(tiny_config, **{"optim.name": "sgd", "optim.momentum": 0.0,
                                      "optim.schedule": "warmup_constant", "optim.warmup_steps": 4,
                                      "optim.learning_rate": 0.2})
    step = jax.jit(make_train_step(exp))
    state = init_state(exp, 0)
    params0 = jax.tree_util.tree_map(np.asarray, state["params"])
    lrs = []
    for i in range(6):
        state, metrics = step(state)
        lrs.append(float(metrics["learning_rate"]))
        if i == 0:  # lr(0) = 0 under warmup: the first update changes nothing
            for a, b in zip(jax.tree_util.tree_leaves(state["params"]), jax.tree_util.tree_leaves(params0)):
                np.testing.assert_array_equal(a, b)
    assert lrs == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2, 0.2])
    assert set(metrics) >= {"loss", "mse", "frac_sq_err_lt_0.16", "grad_norm", "learning_rate"}


def test_nonfinite_step_is_masked_and_recorded(tiny_config):
    exp = _experiment(tiny_config, **{"model.cell": "relu_rnn", "model.recurrent_init": "identity",
                                      "model.init_scale": 2.0, "optim.clip": "none",
                                      "task.seq_len": 200})
    state = init_state(exp, 0)
    params0 = jax.tree_util.tree_map(np.asarray, state["params"])
    step = jax.jit(make_train_step(exp))
    for _ in range(3):
        state, metrics = step(state)
    assert not math.isfinite(float(metrics["loss"]))
    assert int(state["diverged_at"]) == 1  # the first step, recorded once, 1-based
    assert int(state["step"]) == 3
    for a, b in zip(jax.tree_util.tree_leaves(state["params"]), jax.tree_util.tree_leaves(params0)):
        np.testing.assert_array_equal(a, b)  # the last good params are kept


# ----------------------------------------------------------------------------- whole runs
def test_tiny_lstm_learns_adding(tiny_config, tmp_path):
    """LSTM, H=32, adding T=20: well below the 1/6 baseline within a few hundred steps (150 here;
    seeds 0-2 reach 2-7% of the baseline)."""
    c = tiny_config
    c.task.seq_len = 20
    c.model.cell, c.model.hidden_size = "lstm", 32
    c.optim.learning_rate = 1e-2
    c.train.steps, c.train.batch_size = 150, 64
    c.train.eval_every, c.train.log_every = 150, 50
    c.train.eval_batches, c.train.eval_batch_size = 1, 512
    summary = train_and_evaluate(c, str(tmp_path / "lstm"))
    assert summary["status"] == "completed"
    assert summary["final_eval"]["mse"] < 0.25 * summary["baseline"], summary["final_eval"]
    rows = [json.loads(line) for line in open(os.path.join(tmp_path, "lstm", "metrics.jsonl"))]
    train_rows = [r for r in rows if r["split"] == "train"]
    assert [r["step"] for r in train_rows] == [50, 100, 150]
    assert train_rows[-1]["loss"] < train_rows[0]["loss"]
