"""Steering the spectrum (issue #15): the Lyapunov regulariser's gradient is the finite-difference
one and it moves lambda_1 to its target; weight 0 is the program without it; svd_margin keeps
W_s's singular values in [1 - m, 1 + m]; the projection keeps sigma_max(W_s) <= s after every
step, stacked too; bad settings are one-line errors."""

import copy
import json
import re
import os

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

from rnn_spectra import config as config_lib
from rnn_spectra import control
from rnn_spectra.cells import recurrent_matrices
from rnn_spectra.cli import main
from rnn_spectra.config import LyapunovControlConfig, resolve
from rnn_spectra.errors import ConfigError
from rnn_spectra.loop import Loop, train_and_evaluate
from rnn_spectra.model import count_params
from rnn_spectra.spectral import lyapunov_spectrum, make_step_fn
from rnn_spectra.spectral.monitor import SpectralMonitor, regularised_window
from rnn_spectra.sweep import program_signature, stack
from rnn_spectra.train import build, init_state, make_train_step


def experiment(tiny_config, **overrides):
    c = tiny_config
    config_lib.apply_overrides(c, overrides)
    return build(resolve(c))


def run_steps(exp, steps, state=None):
    step = jax.jit(make_train_step(exp))
    state = init_state(exp, exp.run.seed) if state is None else state
    rows = []
    for _ in range(steps):
        state, metrics = step(state)
        rows.append(jax.device_get(metrics))
    return state, rows


def top_singular_value(w):
    return float(np.linalg.svd(np.asarray(w, np.float64), compute_uv=False)[0])


# ----------------------------------------------------------------------------- config
def test_control_keys_default_off_and_documented():
    run = resolve(config_lib.default_config())
    assert run.control.lyapunov.weight == 0 and run.control.max_singular_value == 0
    assert run.model.recurrent_param == "free"
    docs = config_lib.field_docs()
    assert "control.lyapunov.weight" in docs and "control.max_singular_value" in docs
    assert set(config_lib.OFF_BY_DEFAULT) <= set(config_lib.flatten_dict(
        config_lib.default_config().to_dict()))


def test_override_of_a_nested_key_and_an_unknown_one():
    c = config_lib.default_config()
    config_lib.apply_overrides(c, {"control.lyapunov.weight": "0.5", "control.lyapunov.k": "3"})
    assert resolve(c).control.lyapunov == LyapunovControlConfig(weight=0.5, k=3)
    with pytest.raises(ConfigError, match="did you mean --config.control.lyapunov.weight"):
        config_lib.apply_overrides(c, {"control.lyapunov.wieght": "1"})


# ----------------------------------------------------------------------------- the regulariser
@pytest.mark.parametrize("cell,k", [("tanh_rnn", 2), ("lstm", 3)])
def test_regulariser_gradient_matches_central_differences(tiny_config, cell, k):
    with jax.enable_x64(True):
        exp = experiment(tiny_config, **{"model.cell": cell, "model.hidden_size": 4})
        params = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64),
                                        init_state(exp, 0)["params"]["cell"])
        xs = jax.random.uniform(jax.random.PRNGKey(1), (2, 8, exp.model.input_size), jnp.float64)
        lc = LyapunovControlConfig(weight=1.0, target=-0.1, k=k, seq_len=8, discard=0.25)
        ctl = {"weight": jnp.float64(0.7), "target": jnp.float64(-0.1)}

        def f(p):
            return control.lyapunov_penalty(exp.model, lc, ctl, p, xs, jnp.int32(0))[0]

        grad = jax.grad(f)(params)
        flat, unravel = jax.flatten_util.ravel_pytree(params)
        g = jax.flatten_util.ravel_pytree(grad)[0]
        assert np.all(np.isfinite(g))
        for seed in range(3):
            d = jax.random.normal(jax.random.PRNGKey(10 + seed), flat.shape, jnp.float64)
            eps = 1e-5
            fd = (f(unravel(flat + eps * d)) - f(unravel(flat - eps * d))) / (2 * eps)
            np.testing.assert_allclose(float(g @ d), float(fd), rtol=1e-5, atol=1e-9)


def test_exponents_match_the_monitors_lyapunov_function(tiny_config):
    exp = experiment(tiny_config, **{"model.cell": "lstm"})
    params = init_state(exp, 0)["params"]["cell"]
    xs = jax.random.uniform(jax.random.PRNGKey(2), (10, exp.model.input_size))
    cs = make_step_fn(exp.model, params)
    want = lyapunov_spectrum(cs.step_fn, cs.s0, xs, k=3, discard=2)
    got = control.exponents(exp.model, params, xs, 3, 2)
    np.testing.assert_allclose(got, want, atol=2e-4)  # the frame shift: ~1e-4 per step at most


def test_the_monitor_reads_lambda_on_the_regularised_window_where_it_is_not_its_own(tiny_config):
    """A regulariser on the first 6 of T = 10 steps: the spectra row also holds lambda over
    steps 2 .. 5 of each probe (burn-in 25% of 6), the QR method's numbers there; on the whole
    sequence with the monitor's burn-in (seq_len=0) the two windows are one and it is absent."""
    exp = experiment(tiny_config, **{"control.lyapunov.weight": 1.0, "control.lyapunov.seq_len": 6,
                                     "spectral.lyapunov_k": 2})
    params = init_state(exp, 0)["params"]
    monitor = SpectralMonitor(exp)
    row = monitor.measure(params, 0)
    assert row["lyapunov_window/steps"] == [2, 6]
    cs = make_step_fn(exp.model, params["cell"])
    want = jax.jit(jax.vmap(lambda x: lyapunov_spectrum(cs.step_fn, cs.s0, x[:6], k=2, discard=2)))
    np.testing.assert_allclose(row["lyapunov_window/mean"], want(monitor.inputs).mean(0), atol=1e-5)
    assert not np.allclose(row["lyapunov_window/mean"], row["lyapunov/mean"])  # another window
    whole = experiment(tiny_config, **{"control.lyapunov.seq_len": 0}).run
    assert control.window(whole.control.lyapunov, 10) == (10, 2) == (10, monitor.discard)
    assert regularised_window(whole, 10, monitor.discard) is None
    assert regularised_window(exp.run, 10, monitor.discard) == (6, 2)


@pytest.mark.parametrize("cell", ["tanh_rnn", "relu_rnn", "lstm"])
@pytest.mark.parametrize("full", [False, True])
def test_no_nans_at_init_at_the_defaults_and_at_k_equal_to_the_state(tiny_config, cell, full):
    overrides = {"model.cell": cell, "model.hidden_size": 16, "task.seq_len": 100,
                 "control.lyapunov.weight": 1.0}
    if full:  # every direction, dead ReLU units included: the frame shift keeps the QR finite
        overrides["control.lyapunov.k"] = 32 if cell == "lstm" else 16
    _, (m,) = run_steps(experiment(tiny_config, **overrides), 1)
    assert np.isfinite(m["grad_norm"]) and np.isfinite(m["control/lyapunov_penalty"])
    assert np.all(np.isfinite(m["control/lyapunov"]))


def _with(c, overrides):
    config_lib.apply_overrides(c, overrides)
    return resolve(c)


def probe_lambda_1(exp, params):
    """lambda_1 by the repo's Lyapunov function, on held-out sequences, the regulariser's window."""
    T, discard = control.window(exp.run.control.lyapunov, exp.task.length)
    x, _ = exp.task.eval_batch(jax.random.PRNGKey(7), 0, 8, False)
    cs = make_step_fn(exp.model, params["cell"])
    per = jax.vmap(lambda xs: lyapunov_spectrum(cs.step_fn, cs.s0, xs[:T], k=1, discard=discard))(x)
    return float(jnp.mean(per))


def test_regulariser_steers_lambda_1_to_the_target(tiny_config):
    exp = experiment(tiny_config, **{
        "model.hidden_size": 16, "task.seq_len": 50, "model.recurrent_init": "normal",
        "model.init_scale": 0.9, "train.batch_size": 16, "optim.learning_rate": 0.003,
        "control.lyapunov.weight": 10.0, "control.lyapunov.target": 0.0})
    before = probe_lambda_1(exp, init_state(exp, 0)["params"])
    assert -0.5 < before < -0.2
    state, rows = run_steps(exp, 200)
    assert abs(probe_lambda_1(exp, state["params"])) < 0.05
    assert abs(rows[-1]["control/lyapunov_1"]) < 0.05  # what the train metrics saw


def test_the_regulariser_reaches_dead_units_outgoing_weights_which_adam_moves_at_full_step(
        tiny_config):
    """The control study's IRNN anomaly (docs/control/first/results.md, adding T = 200: the IRNN with
    and without the regulariser end at the same loss, to 3e-6, but sigma_max(W_s) 1.47 vs 1.01).
    An identity-init ReLU net whose input weights drive some units below zero keeps them dead
    (h_j = 0 on every step). Their outgoing weights W_s[:, dead] multiply zeros: the task loss's
    gradient there is exactly 0. The regulariser's QR frame spans every direction (random, and
    shifted by FRAME_SHIFT), so its exponents do depend on those columns: a small gradient
    (lambda_1 of an identity W_s is ~0, the target). Adam's step does not scale with the
    gradient, so those columns move by ~lr per step while nothing the network computes changes:
    sigma_max grows, the loss does not. (Re-running that study row, seed 100: the whole
    difference between the two W_s lay in the columns of the 7 units dead on the probe
    sequences; restoring them gave sigma_max 1.0072, the plain run's.)"""
    common = {"model.cell": "irnn", "model.recurrent_init": "identity", "model.hidden_size": 16,
              "task.seq_len": 60, "train.batch_size": 16, "optim.name": "adam",
              "optim.learning_rate": 0.001, "seed": 0}
    plain = experiment(copy.deepcopy(tiny_config), **common)
    reg = experiment(tiny_config, **common, **{"control.lyapunov.weight": 1.0,
                                                "control.lyapunov.target": 0.0})
    start = init_state(reg, 0)
    steps = 60
    plain_end, reg_end = run_steps(plain, steps)[0], run_steps(reg, steps)[0]
    x = reg.task.batch(jax.random.PRNGKey(1), 512)[0]
    dead = np.ones(16, bool)
    for state in (start, plain_end):  # dead before and after training, on 512 sequences
        dead &= np.all(np.asarray(reg.model.unroll(state["params"]["cell"], x)[0]) == 0, axis=(0, 1))
    assert 0 < dead.sum() < dead.size  # the setting has dead units, and live ones
    W0 = np.asarray(start["params"]["cell"]["W_s"])[:, dead]
    # Without the regulariser nothing moves those weights: the loss's gradient there is 0.
    np.testing.assert_array_equal(np.asarray(plain_end["params"]["cell"]["W_s"])[:, dead], W0)
    moved = np.abs(np.asarray(reg_end["params"]["cell"]["W_s"])[:, dead] - W0).max()

    def penalty(p):
        xs = reg.task.train_batch(reg_end["key"], reg_end["step"], 16)[0]
        return control.lyapunov_penalty(reg.model, reg.run.control.lyapunov, reg_end["control"],
                                        p["cell"], xs, reg_end["step"])[0]

    g = np.abs(np.asarray(jax.grad(penalty)(reg_end["params"])["cell"]["W_s"])[:, dead]).max()
    sgd_scale = 0.001 * steps * g  # what plain gradient steps of that size would add up to
    assert moved > 5 * 0.001 and moved > 1000 * sgd_scale, (moved, sgd_scale)


def test_weight_zero_is_the_program_without_the_control_section(tiny_config):
    plain = tiny_config.copy_and_resolve_references()
    with plain.unlocked():
        del plain["control"]
    off = tiny_config.copy_and_resolve_references()
    config_lib.apply_overrides(off, {"control.lyapunov.k": 3, "control.lyapunov.every": 5,
                                     "control.lyapunov.target": 0.3})
    exps = [build(resolve(plain)), build(resolve(off))]
    states = [init_state(e, 0) for e in exps]
    assert jax.tree_util.tree_structure(states[0]) == jax.tree_util.tree_structure(states[1])
    texts = [jax.jit(make_train_step(e)).lower(s).as_text() for e, s in zip(exps, states)]
    assert texts[0] == texts[1]
    (a, ra), (b, rb) = run_steps(exps[0], 10), run_steps(exps[1], 10)
    assert all(np.array_equal(x, y) for x, y in zip(jax.tree_util.tree_leaves(a),
                                                   jax.tree_util.tree_leaves(b)))
    assert ra[-1].keys() == rb[-1].keys() and not any(k.startswith("control/") for k in ra[-1])
    assert all(np.array_equal(ra[i][k], rb[i][k]) for i in range(10) for k in ra[i])


def test_every_and_until_switch_the_regulariser_by_step(tiny_config):
    exp = experiment(tiny_config, **{"control.lyapunov.weight": 1.0, "control.lyapunov.every": 2,
                                     "control.lyapunov.until": 5})
    _, rows = run_steps(exp, 8)
    on = [bool(np.isfinite(r["control/lyapunov_1"])) for r in rows]
    assert on == [True, False, True, False, True, False, False, False]  # steps 0, 2, 4
    assert all(r["control/lyapunov_penalty"] == 0 for r, o in zip(rows, on) if not o)


def test_regularised_run_resumes_exactly(tiny_config, tmp_path):
    config_lib.apply_overrides(tiny_config, {
        "control.lyapunov.weight": 1.0, "control.lyapunov.every": 3, "model.recurrent_param":
        "svd_margin", "checkpoint.every_steps": 10})
    train_and_evaluate(tiny_config, str(tmp_path / "straight"))
    half = tiny_config.copy_and_resolve_references()
    half.train.steps = 10
    train_and_evaluate(half, str(tmp_path / "resumed"))
    train_and_evaluate(tiny_config, str(tmp_path / "resumed"))
    rows = [[json.loads(line) for line in open(tmp_path / w / "metrics.jsonl")]
            for w in ("straight", "resumed")]
    strip = lambda rs: [{k: v for k, v in r.items() if k != "wall_time"} for r in rs]  # noqa: E731
    assert strip(rows[0]) == strip(rows[1])
    assert any("control/lyapunov" in r for r in rows[0])


def test_until_may_change_on_resume_only_for_steps_not_yet_taken(tiny_config):
    run = resolve(tiny_config)
    old = {"control": {"lyapunov": {"until": 0}}}
    change = lambda u: resolve(_cfg(tiny_config, u))  # noqa: E731
    control.check_resume("w", change(50), old, start=20)  # stops at 50: steps 0..19 unchanged
    control.check_resume("w", change(10), {"control": {"lyapunov": {"until": 5}}}, start=3)
    with pytest.raises(ConfigError, match="already trained were regularised"):
        control.check_resume("w", change(10), old, start=20)
    control.check_resume("w", run, {"control": {"lyapunov": {"until": 5}}}, start=20)  # weight 0


def _cfg(c, until):
    c = c.copy_and_resolve_references()
    c.control.lyapunov.weight, c.control.lyapunov.until = 1.0, until
    return c


# ----------------------------------------------------------------------------- svd_margin
@pytest.mark.parametrize("margin", [0.1, 0.0])
def test_svd_margin_keeps_singular_values_in_the_band(tiny_config, margin):
    exp = experiment(tiny_config, **{"model.recurrent_param": "svd_margin", "model.margin": margin,
                                     "optim.learning_rate": 0.05})
    state, rows = run_steps(exp, 30)
    assert np.isfinite(rows[-1]["loss"])
    w = np.asarray(recurrent_matrices("tanh_rnn", state["params"]["cell"], exp.run.model)["W_s"],
                   np.float64)
    sv = np.linalg.svd(w, compute_uv=False)
    assert np.all(sv >= 1 - margin - 1e-5) and np.all(sv <= 1 + margin + 1e-5)
    if margin:
        assert sv[0] - sv[-1] > 0.02  # training moved them inside the band
    else:
        np.testing.assert_allclose(w.T @ w, np.eye(w.shape[0]), atol=1e-5)
    # The monitor measures the W_s the cell uses; the free parameters are counted as such.
    row = SpectralMonitor(exp).measure(state["params"], 30)
    np.testing.assert_allclose(row["sv/W_s"], sv, atol=1e-5)
    H, D = exp.run.model.hidden_size, exp.model.input_size
    assert count_params(state["params"], "tanh_rnn") == D * H + H * (H - 1) + H + H + H + 1


def test_svd_margin_init_follows_recurrent_init_and_scale(tiny_config):
    exp = experiment(tiny_config, **{"model.cell": "irnn", "model.recurrent_param": "svd_margin",
                                     "model.margin": 0.2, "model.init_scale": 1.1})
    w = recurrent_matrices("irnn", init_state(exp, 0)["params"]["cell"], exp.run.model)["W_s"]
    np.testing.assert_allclose(w, 1.1 * np.eye(w.shape[0]), atol=1e-6)


# ----------------------------------------------------------------------------- projection
def test_projection_bounds_sigma_max_after_every_step(tiny_config):
    exp = experiment(tiny_config, **{"model.cell": "relu_rnn", "model.init_scale": 2.0,
                                     "control.max_singular_value": 1.0, "optim.learning_rate": 0.05})
    assert top_singular_value(init_state(exp, 0)["params"]["cell"]["W_s"]) > 2
    step = jax.jit(make_train_step(exp))
    state = init_state(exp, 0)
    for _ in range(15):
        state, _ = step(state)
        assert top_singular_value(state["params"]["cell"]["W_s"]) <= 1.0 + 1e-5


def test_projection_in_a_vmapped_sweep_keeps_each_members_bound(tiny_config, tmp_path):
    configs = []
    for seed, bound in ((0, 1.0), (1, 0.8)):
        c = tiny_config.copy_and_resolve_references()
        c.seed, c.model.cell, c.model.init_scale = seed, "relu_rnn", 2.0
        c.control.max_singular_value = bound
        configs.append(c)
    runs = [resolve(c) for c in configs]
    assert program_signature(runs[0]) == program_signature(runs[1])  # one program, two bounds
    exps = [build(r) for r in runs]
    vstep = jax.jit(jax.vmap(make_train_step(exps[0])))
    state = stack([init_state(e, r.seed) for e, r in zip(exps, runs)])
    for _ in range(10):
        state, _ = vstep(state)
        for i, bound in enumerate((1.0, 0.8)):
            assert top_singular_value(state["params"]["cell"]["W_s"][i]) <= bound + 1e-5
    # The host loop's sweep: the same stacking, with checkpoints and per-member workdirs.
    Loop(configs, [str(tmp_path / f"m{i}") for i in range(2)], str(tmp_path / "group")).run()
    for i, bound in enumerate((1.0, 0.8)):
        summary = json.load(open(tmp_path / f"m{i}" / "summary.json"))
        assert summary["status"] == "completed"


def test_sweep_signature_stacks_values_but_not_on_and_off():
    base = config_lib.default_config()
    sig = lambda **o: program_signature(_with(base.copy_and_resolve_references(), o))  # noqa: E731
    assert sig(**{"control.lyapunov.weight": 0.1}) == sig(**{"control.lyapunov.weight": 2.0,
                                                            "control.lyapunov.target": 0.1})
    assert sig(**{"control.lyapunov.weight": 0.1}) != sig()
    assert sig(**{"control.lyapunov.weight": 0.1}) != sig(**{"control.lyapunov.weight": 0.1,
                                                            "control.lyapunov.k": 2})
    assert sig(**{"control.max_singular_value": 1.0}) != sig()


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("overrides,fragment", [
    ({"control.lyapunov.weight": -1.0}, "control.lyapunov.weight must be >= 0"),
    ({"model.margin": -0.1}, "model.margin must be >= 0"),
    ({"control.max_singular_value": -1.0}, "control.max_singular_value must be >= 0"),
    ({"control.lyapunov.k": 0}, "control.lyapunov.k must be a positive int"),
    ({"model.recurrent_param": "svd"}, "model.recurrent_param must be one of free, svd_margin"),
    # finite in float64, infinite in the float32 the run computes in
    ({"control.lyapunov.weight": 1e300}, "control.lyapunov.weight=1e\\+300 is infinite in float32"),
    ({"control.max_singular_value": 1e300}, "control.max_singular_value=1e\\+300 is infinite"),
    ({"model.epsilon": 1e300}, "model.epsilon=1e\\+300 is infinite in float32"),
    ({"model.gamma": 1e300}, "model.gamma=1e\\+300 is infinite in float32"),
    ({"control.lyapunov.target": -1e39}, "control.lyapunov.target=-1e\\+39 is infinite"),
])
def test_bad_values_are_refused_by_name(overrides, fragment):
    c = config_lib.default_config()
    config_lib.apply_overrides(c, overrides)
    with pytest.raises(ConfigError, match=fragment):
        resolve(c)


@pytest.mark.parametrize("overrides,fragment", [
    ({"control.lyapunov.weight": 1.0, "control.lyapunov.k": 9}, "k=9 exceeds the state size 8"),
    ({"model.cell": "lstm", "control.lyapunov.weight": 1.0, "control.lyapunov.k": 17},
     "exceeds the state size 16"),
    ({"model.cell": "lstm", "model.recurrent_param": "svd_margin"},
     re.escape("model.recurrent_param=svd_margin needs a cell with one square recurrent matrix W_s; "
               "valid: irnn, relu_rnn, tanh_rnn (got model.cell='lstm')")),
    ({"model.cell": "gru", "control.max_singular_value": 1.0}, "control.max_singular_value needs"),
    ({"model.recurrent_param": "svd_margin", "control.max_singular_value": 1.0},
     "bound W_s by model.margin"),
    ({"model.recurrent_param": "svd_margin", "model.margin": 1.5}, r"model.margin must be in \[0, 1\]"),
    ({"model.margin": 0.5}, "model.margin=0.5 has no effect with model.recurrent_param=free"),
    ({"control.lyapunov.weight": 1.0, "control.lyapunov.probes": 1000},
     "control.lyapunov.probes=1000 exceeds train.batch_size"),
    ({"model.recurrent_param": "svd_margin", "model.recurrent_init": "normal"},
     "starts from an orthogonal W_s"),
    ({"model.recurrent_param": "svd_margin", "model.init_scale": 2.0}, "outside svd_margin"),
])
def test_settings_that_do_not_fit_the_model_are_one_line_errors(tiny_config, overrides, fragment):
    with pytest.raises(ConfigError, match=fragment) as info:
        experiment(tiny_config, **overrides)
    assert "\n" not in str(info.value)


def test_cli_refuses_svd_margin_on_lstm_in_one_line(capsys, tmp_path):
    workdir = tmp_path / "w"
    adding = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                          "adding.py")
    code = main(["train", "--config", adding, "--workdir", str(workdir), "--config.model.cell=lstm",
                 "--config.model.recurrent_param=svd_margin", "--config.train.progress=false"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert "valid: irnn, relu_rnn, tanh_rnn" in lines[0]
    assert not workdir.exists()


# ----------------------------------------------------------------------------- no deadlock

DEADLOCK_SCRIPT = """
import dataclasses, sys
from rnn_spectra.study.presets import ADDING, CONTROLLED, PRESETS, base
c = PRESETS["cpu-grid"]  # the first control study's design (docs/control/first)
PRESETS["deadlock"] = dataclasses.replace(
    c, name="deadlock", tasks=ADDING[1:2], confirm_seeds=(100, 101), extend_grid=False,
    variants=tuple(v for v in CONTROLLED if v.name == "tanh_rnn/orthogonal/margin"),
    base=base(hidden_size=32, steps=4, batch_size=32, eval_every=2, eval_batches=1,
              eval_batch_size=32, log_every=2, spectral_every=2))
from rnn_spectra.study.run import run_study
run_study("deadlock", sys.argv[1])
print("finished")
"""


def test_svd_margin_sweep_of_the_control_preset_does_not_hang(tmp_path):
    """The first control study's svd_margin group (10 members, H = 32) once hung on its first step on a
    2-core CPU, and its confirmation (spectra measured) at the monitor: batched LAPACK calls of
    expm (LU, triangular solves) run at once, each waiting in jaxlib's ParallelBatchMap for the
    pool threads the other held. The pilot (10 members) and a 2-member confirmation with the
    monitor, in a child process killed after 150 s, so that a hang fails the test, not the CI."""
    import subprocess
    import sys

    try:
        out = subprocess.run([sys.executable, "-c", DEADLOCK_SCRIPT, str(tmp_path / "w")],
                             capture_output=True, text=True, timeout=150)
    except subprocess.TimeoutExpired:
        pytest.fail("the svd_margin sweep hung: a LAPACK call in its program? (expm_by_squaring)")
    assert out.returncode == 0 and "finished" in out.stdout, out.stderr[-2000:]


@pytest.mark.parametrize("scale", [0.0, 0.1, 3.0, 40.0])
def test_matmul_expm_matches_scipy_in_float64(scale):
    """svd_margin's LAPACK-free expm (scaling and squaring a Taylor polynomial) against scipy's
    Padé expm, float64, at norms that need 0 to ~9 squarings; and its gradient against JAX's."""
    import scipy.linalg

    from rnn_spectra.cells.constrained import exp_orthogonal, exp_orthogonal_matmul, skew

    with jax.enable_x64(True):
        a = scale * jax.random.normal(jax.random.PRNGKey(0), (12, 12), jnp.float64)
        ref = scipy.linalg.expm(np.asarray(skew(a)))
        np.testing.assert_allclose(np.asarray(exp_orthogonal_matmul(a)), ref, atol=1e-10)
        w = jnp.arange(144.0).reshape(12, 12) / 144
        g = jax.grad(lambda a: jnp.sum(exp_orthogonal_matmul(a) * w))(a)
        g_ref = jax.grad(lambda a: jnp.sum(exp_orthogonal(a) * w))(a)
        np.testing.assert_allclose(np.asarray(g), np.asarray(g_ref), atol=1e-8)
