"""Spectral module: identities against independent computations (jacfwd of the whole unroll,
float64 numpy SVD of explicit products, analytic linear systems, restarted backprop)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from rnn_spectra import config as config_lib
from rnn_spectra.cells import CELLS
from rnn_spectra.errors import ConfigError, UserError
from rnn_spectra.config import ModelConfig
from rnn_spectra.model import SequenceModel
from rnn_spectra.spectral import (
    SpectralInputError,
    dead_prefix,
    kaplan_yorke_dimension,
    near_zero_count,
    step_jacobian_stats,
    step_norms,
    gradient_flow,
    jacobian_products,
    jacobian_products_at_lags,
    lag_log_norms,
    lyapunov_from_jacobians,
    lyapunov_spectrum,
    make_step_fn,
    matrix_spectrum,
    model_gradient_flow,
    product_log_singular_values,
    spectral_radius,
    step_jacobians,
    trajectory,
)
from rnn_spectra.spectral.lyapunov import initial_frame
from rnn_spectra.tasks import get_task

H, D, T = 3, 2, 7


@pytest.fixture
def x64():
    """Float64 for a reference computation; restored afterwards."""
    with jax.enable_x64(True):
        yield


def tiny_model(cell, hidden=H, input_size=D, readout="last", output_size=1):
    return SequenceModel(ModelConfig(cell=cell, hidden_size=hidden, bias_init=0.1),
                         input_size, output_size, readout)


def tiny_params(model, seed=0):
    params = model.init(jax.random.PRNGKey(seed))
    # Scale W_s up so the Jacobians are far from the identity and the gates far from 1/2
    # (IndRNN's diagonal u, expRNN's skew generator A: the params W_s is derived from).
    name = next(k for k in ("W_s", "u", "A") if k in params["cell"])
    params["cell"] = {**params["cell"], name: 1.3 * params["cell"][name]}
    return params


def _xs(seed=1, steps=T, d=D):
    return jax.random.normal(jax.random.PRNGKey(seed), (steps, d))


def _unroll_from(step_fn, xs, t):
    """s_T as a function of s_t: the whole remaining unroll, the thing we never differentiate per t."""

    def f(s):
        for u in range(t, xs.shape[0]):
            s = step_fn(s, xs[u])
        return s

    return f


# ----------------------------------------------------------------------------- Jacobians
@pytest.mark.parametrize("cell", sorted(CELLS))
def test_step_jacobians_and_products_match_jacfwd_of_whole_unroll(cell):
    model = tiny_model(cell)
    cs = make_step_fn(model, tiny_params(model)["cell"])
    xs = _xs()
    states = trajectory(cs.step_fn, cs.s0, xs)
    assert cs.state_size == ravel_pytree(model.initial_carry(()))[0].size
    J = step_jacobians(cs.step_fn, cs.s0, xs)
    P = jacobian_products(J)
    P_assoc = jacobian_products(J, method="associative")
    assert J.shape == P.shape == (T, cs.state_size, cs.state_size)
    for t in (0, 3, T - 1):
        ref = jax.jit(jax.jacfwd(_unroll_from(cs.step_fn, xs, t)))(states[t])
        np.testing.assert_allclose(P[t], ref, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(P_assoc[t], ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(J[T - 1], P[T - 1])  # the last product is the last step alone
    # The products are not trivial (else the test could not fail).
    assert float(jnp.max(jnp.abs(P[0] - jnp.eye(cs.state_size)))) > 1e-2
    lags = [1, 4, T]
    np.testing.assert_allclose(jacobian_products_at_lags(J, lags), P[T - np.array(lags)], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_flat_state_is_the_model_carry(cell):
    """The flattened state and ``hidden`` agree with the model's own unroll (LSTM: (c, h))."""
    model = tiny_model(cell)
    params = tiny_params(model)
    cs = make_step_fn(model, params["cell"])
    xs = _xs()
    states = trajectory(cs.step_fn, cs.s0, xs)
    hidden, carries = model.unroll(params["cell"], xs[None], return_carries=True)
    flat = jax.vmap(lambda c: ravel_pytree(c)[0])(jax.tree_util.tree_map(lambda a: a[:, 0], carries))
    np.testing.assert_allclose(states[1:], flat, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(jax.vmap(cs.hidden)(states[1:]), hidden[:, 0], rtol=1e-6, atol=1e-6)


def test_lag_log_norms_match_explicit_products():
    model = tiny_model("relu_rnn", hidden=4)
    cs = make_step_fn(model, tiny_params(model)["cell"])
    xs = _xs(steps=12)
    P = jacobian_products(step_jacobians(cs.step_fn, cs.s0, xs))
    lags = [1, 2, 5, 12]
    ref = np.log(np.linalg.norm(np.asarray(P)[12 - np.array(lags)], ord=2, axis=(1, 2)))
    np.testing.assert_allclose(lag_log_norms(cs.step_fn, cs.s0, xs, lags), ref, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- product spectra
def _explicit_log_sv(J):
    P, out = np.eye(J.shape[1]), []
    for t in range(J.shape[0] - 1, -1, -1):
        P = P @ J[t]
        with np.errstate(divide="ignore"):
            out.append(np.log(np.linalg.svd(P, compute_uv=False)))
    return np.asarray(out[::-1])


def test_product_log_singular_values_match_float64_svd(x64):
    rng = np.random.default_rng(0)
    J = rng.normal(size=(6, 5, 5))
    ref = _explicit_log_sv(J)
    out64 = np.asarray(product_log_singular_values(jnp.asarray(J)))
    assert out64.dtype == np.float64
    np.testing.assert_allclose(out64, ref, rtol=0, atol=1e-9)
    out32 = np.asarray(product_log_singular_values(jnp.asarray(J, jnp.float32)))
    np.testing.assert_allclose(out32, ref, rtol=0, atol=2e-4)
    assert np.all(np.diff(out32, axis=1) <= 0)  # descending
    lagged = np.asarray(product_log_singular_values(jnp.asarray(J), lags=[1, 3, 6]))
    np.testing.assert_allclose(lagged, ref[[5, 3, 0]], atol=1e-9)


def test_product_log_singular_values_with_dead_units(x64):
    """ReLU-like Jacobians (rows zeroed): live singular values exact, rank-deficient ones -inf."""
    rng = np.random.default_rng(1)
    W = rng.normal(size=(6, 6)) * 2 / np.sqrt(6)
    J = np.stack([(rng.random(6) > 0.3)[:, None] * W for _ in range(8)])
    ref = _explicit_log_sv(J)
    out = np.asarray(product_log_singular_values(jnp.asarray(J, jnp.float32)))
    live = ref > ref[:, :1] - 14  # above float64 round-off of the explicit product
    np.testing.assert_allclose(out[live], ref[live], rtol=0, atol=2e-4)
    rank = np.array([np.linalg.matrix_rank(np.linalg.multi_dot([*J[t:][::-1], np.eye(6)])) for t in range(8)])
    for t in range(8):
        assert np.all(np.isneginf(out[t, rank[t]:]) | (out[t, rank[t]:] < ref[t, 0] - 14))
    assert np.all(np.isfinite(out[live]))


def test_overflow_product_stays_finite_and_exact():
    """W = 1.5 I over T = 5000: plain float32 products overflow; ours give 5000 ln 1.5 = 2027.3."""
    step = lambda s, x: 1.5 * s + x  # noqa: E731
    s0, xs = jnp.zeros(3), jnp.zeros((5000, 1))
    J = step_jacobians(step, s0, xs)
    assert not np.all(np.isfinite(np.asarray(jacobian_products(J)[0])))  # the naive way breaks
    lags = [1, 100, 5000]
    out = np.asarray(product_log_singular_values(J, lags=lags))
    expected = np.log(1.5) * np.asarray(lags, np.float64)
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out, np.repeat(expected[:, None], 3, axis=1), rtol=2e-6)
    np.testing.assert_allclose(lag_log_norms(step, s0, xs, lags), expected, rtol=2e-6)
    np.testing.assert_allclose(lyapunov_spectrum(step, s0, xs, k=2), [np.log(1.5)] * 2, rtol=1e-5)


@pytest.mark.slow
def test_product_log_singular_values_graded_tanh_spectrum(x64):
    """n = 16, T = 40, tanh-like Jacobians: singular values spread over ~90 nats, far beyond what
    a float32 SVD of the product resolves; every one above float64 round-off must match."""
    rng = np.random.default_rng(3)
    W = rng.normal(size=(16, 16)) / 4
    J = np.stack([(1 - np.tanh(rng.normal(size=16)) ** 2)[:, None] * W for _ in range(40)])
    ref = _explicit_log_sv(J)
    out = np.asarray(product_log_singular_values(jnp.asarray(J, jnp.float32)))
    live = ref > ref[:, :1] - 30
    assert (ref[0, 0] - ref[0][live[0]].min()) > 20  # graded: beyond float32's ~16 nats
    np.testing.assert_allclose(out[live], ref[live], rtol=0, atol=5e-4)


# ----------------------------------------------------------------------------- analytic linear case
def _linear_case(d, seed=0):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(len(d), len(d))))
    W = jnp.asarray(q @ np.diag(d) @ q.T, jnp.float32)
    return W, (lambda s, x: W @ s + x)


def test_linear_system_lyapunov_and_lag_spectra():
    d = np.array([1.2, -0.9, 0.5, 0.1])
    W, step = _linear_case(d)
    steps = 1000
    xs = 0.1 * jax.random.normal(jax.random.PRNGKey(0), (steps, 4))
    want = np.sort(np.log(np.abs(d)))[::-1]
    for method in ("jvp", "jacobian"):
        lam = np.asarray(lyapunov_spectrum(step, jnp.zeros(4), xs, method=method))
        np.testing.assert_allclose(lam, want, atol=3e-3)
    J = jnp.broadcast_to(W, (60, 4, 4))
    lags = np.array([1, 3, 10, 60])
    out = np.asarray(product_log_singular_values(J, lags=lags))
    np.testing.assert_allclose(out, lags[:, None] * want[None, :], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("cell,reorth_every", [("tanh_rnn", 1), ("lstm", 3)])
def test_lyapunov_matrix_free_matches_materialised(cell, reorth_every):
    model = tiny_model(cell, hidden=4)
    cs = make_step_fn(model, tiny_params(model)["cell"])
    xs = _xs(steps=40)
    free = lyapunov_spectrum(cs.step_fn, cs.s0, xs, k=3, reorth_every=reorth_every, method="jvp")
    per_step = lyapunov_spectrum(cs.step_fn, cs.s0, xs, k=3, reorth_every=reorth_every, method="jacobian")
    stored = lyapunov_from_jacobians(step_jacobians(cs.step_fn, cs.s0, xs), k=3, reorth_every=reorth_every)
    np.testing.assert_allclose(free, stored, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(per_step, stored, rtol=1e-4, atol=1e-5)
    assert free.shape == (3,) and np.all(np.diff(np.asarray(free)) <= 0)


def test_lyapunov_sum_is_log_det_growth():
    """k = n: the exponents sum to the mean ln|det J| (volume growth), an identity of the QR method."""
    model = tiny_model("gru", hidden=4)
    cs = make_step_fn(model, tiny_params(model)["cell"])
    xs = _xs(steps=30)
    J = step_jacobians(cs.step_fn, cs.s0, xs)
    lam = lyapunov_from_jacobians(J)
    logdet = np.mean(np.linalg.slogdet(np.asarray(J, np.float64))[1])
    np.testing.assert_allclose(float(jnp.sum(lam)), logdet, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- burn-in and windows
def _qr_reference(J, Q, count_from):
    """The QR method in float64 numpy, counting ln|R_ii| from step ``count_from`` on."""
    total = np.zeros(Q.shape[1])
    for t, J_t in enumerate(J):
        Q, R = np.linalg.qr(J_t @ Q)
        if t >= count_from:
            total += np.log(np.abs(np.diagonal(R)))
    return np.sort(total / (len(J) - count_from))[::-1]


def test_lyapunov_discard_counts_only_the_steps_after_the_burn_in():
    model = tiny_model("tanh_rnn")
    cs = make_step_fn(model, tiny_params(model)["cell"])
    xs = _xs()
    J = np.asarray(step_jacobians(cs.step_fn, cs.s0, xs), np.float64)
    Q0 = np.asarray(initial_frame(H, H), np.float64)
    lam0 = lyapunov_spectrum(cs.step_fn, cs.s0, xs)
    # discard = 0 is the average from step 0 of before; a traced 0 (the monitor's) the same numbers.
    np.testing.assert_array_equal(lam0, lyapunov_spectrum(cs.step_fn, cs.s0, xs, discard=0))
    traced = jax.jit(lambda d: lyapunov_spectrum(cs.step_fn, cs.s0, xs, discard=d))(jnp.int32(0))
    np.testing.assert_array_equal(lam0, traced)
    np.testing.assert_allclose(lam0, _qr_reference(J, Q0, 0), rtol=1e-4, atol=1e-5)
    # discard = T - 1: the log stretching of the last step alone (of the frame the others evolved);
    # with k = n they sum to ln|det J[T-1]|.
    last = [lyapunov_spectrum(cs.step_fn, cs.s0, xs, discard=T - 1),
            lyapunov_from_jacobians(jnp.asarray(J, jnp.float32), discard=T - 1),
            lyapunov_spectrum(cs.step_fn, cs.s0, xs, discard=T - 1, reorth_every=3)]
    for lam in last:
        np.testing.assert_allclose(lam, _qr_reference(J, Q0, T - 1), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(np.sum(lam), np.linalg.slogdet(J[-1])[1], rtol=1e-4, atol=1e-4)
    assert not np.allclose(last[0], lam0, atol=1e-3)
    # In between, and with re-orthonormalisation every 3 steps (one is forced at the burn-in's end).
    for d in (2, 4):
        want = _qr_reference(J, Q0, d)
        for r in (1, 3):
            np.testing.assert_allclose(lyapunov_spectrum(cs.step_fn, cs.s0, xs, discard=d, reorth_every=r),
                                       want, rtol=1e-4, atol=1e-4)
    with pytest.raises(SpectralInputError, match="discard=7"):
        lyapunov_spectrum(cs.step_fn, cs.s0, xs, discard=T)


def test_near_zero_count_and_kaplan_yorke_dimension():
    lam = jnp.asarray([[0.3, 0.005, -0.2, -0.5], [-0.1, -0.2, -0.3, -jnp.inf], [0.0, 0.0, -jnp.inf, -jnp.inf],
                       [2e-7, -3e-7, -0.004, -1.0], [0.2, 0.1, 0.05, -0.1]])
    np.testing.assert_array_equal(near_zero_count(lam), [1, 0, 2, 3, 0])
    # j = 3 (0.3 + 0.005 - 0.2 >= 0), then 0.105 / 0.5; all negative: 0; exactly neutral directions
    # (float32 rounding included) count fully; every partial sum >= 0: the number given.
    np.testing.assert_allclose(kaplan_yorke_dimension(lam), [3 + 0.105 / 0.5, 0, 2, 2 + 0.0, 4], rtol=1e-6)


def test_lag_norms_start_after_the_dead_prefix():
    """``start=t0``: the Jacobians before t0 count as the identity, so lags reaching back past t0
    measure ds_T/ds_t0 (and are finite where the true product through zero steps is 0)."""
    model = tiny_model("irnn", hidden=4, input_size=1)
    params = model.init(jax.random.PRNGKey(0))
    params["cell"] = {**params["cell"], "b": jnp.zeros(4)}
    cs = make_step_fn(model, params["cell"])
    xs = jnp.concatenate([jnp.zeros((5, 1)), jax.random.uniform(jax.random.PRNGKey(1), (15, 1), minval=0.2)])
    J = step_jacobians(cs.step_fn, cs.s0, xs)
    stats = step_jacobian_stats(cs.step_fn, cs.s0, xs)
    np.testing.assert_array_equal(stats["zero"], np.arange(20) < 5)  # zero state, zero input: J = 0
    assert int(dead_prefix(stats["zero"])) == 5
    lags = np.array([1, 4, 15, 20])
    plain = np.asarray(lag_log_norms(cs.step_fn, cs.s0, xs, lags))
    assert np.isneginf(plain[-1]) and np.all(np.isfinite(plain[:3]))
    clamped = np.asarray(lag_log_norms(cs.step_fn, cs.s0, xs, lags, start=5))
    want = np.asarray(product_log_singular_values(J[5:], lags=[1, 4, 15]))[:, 0]
    np.testing.assert_allclose(clamped, [*want, want[-1]], rtol=1e-5, atol=1e-5)


def test_effective_step_norm_is_the_mean_spectral_norm_of_the_step_jacobians():
    from rnn_spectra.spectral.monitor import sequence_measurements

    for cell in ("lstm", "gru"):  # gated: no single recurrent matrix is the factor of the bound
        model = tiny_model(cell)
        cs = make_step_fn(model, tiny_params(model)["cell"])
        xs = _xs()
        direct = np.linalg.norm(np.asarray(step_jacobians(cs.step_fn, cs.s0, xs), np.float64), 2, axis=(1, 2))
        np.testing.assert_allclose(step_norms(cs.step_fn, cs.s0, xs), direct, rtol=1e-5)
        m = sequence_measurements(cs, xs, [1, T], discard=2, k=2)
        assert int(m["t0"]) == 0 and int(m["start"]) == 2
        np.testing.assert_allclose(m["step_norm"], direct[2:].mean(), rtol=1e-5)
        np.testing.assert_allclose(m["step_norm_max"], direct[2:].max(), rtol=1e-5)
        assert float(m["dead_units"]) == 0.0 and float(m["zero_steps"]) == 0.0


def test_lanczos_step_norm_is_a_lower_bound_close_to_the_svd():
    """The monitor's cheap step norm (above ``EXACT_MAX``): 16 Lanczos steps on J^T J. On each
    kind of spectrum it meets, it never exceeds the SVD, and it comes within the tolerances the
    README states: the window mean within 2e-3, every single step within 3e-2."""
    from rnn_spectra.spectral.matrices import lanczos_top_singular_value
    from rnn_spectra.spectral.monitor import LANCZOS_STEPS

    v0 = jax.random.normal(jax.random.PRNGKey(0), (100,))
    top = jax.jit(jax.vmap(lambda J: lanczos_top_singular_value(J, v0, LANCZOS_STEPS)))
    # Clustered top (the default tanh init, J = diag(1 - h^2) W_orthogonal), a Marchenko-Pastur
    # edge (Gaussian), one dominant direction, and exactly zero (a dead ReLU step).
    W = np.linalg.qr(np.random.default_rng(0).normal(size=(100, 100)))[0]
    d = np.random.default_rng(1).uniform(0.2, 1.0, (5, 100))
    mats = np.concatenate([d[:, :, None] * W, np.random.default_rng(2).normal(size=(5, 100, 100)) / 10,
                           np.outer(np.ones(100), np.ones(100))[None] / 50 + np.eye(100) * 0.5,
                           np.zeros((1, 100, 100))]).astype(np.float32)
    exact = np.linalg.svd(mats.astype(np.float64), compute_uv=False)[:, 0]
    est = np.asarray(top(jnp.asarray(mats)), np.float64)
    assert np.all(est <= exact * (1 + 1e-5) + 1e-7) and est[-1] == 0.0
    np.testing.assert_allclose(est, exact, rtol=3e-2)
    # On real step Jacobians along a trajectory (tanh at its orthogonal init, an LSTM), n > 96.
    for cell, hidden in (("tanh_rnn", 100), ("lstm", 64)):
        model = tiny_model(cell, hidden=hidden)
        cs = make_step_fn(model, tiny_params(model)["cell"])
        xs = _xs(steps=30)
        svd = step_jacobian_stats(cs.step_fn, cs.s0, xs)["norm"]
        lz = step_jacobian_stats(cs.step_fn, cs.s0, xs, norm_steps=LANCZOS_STEPS)["norm"]
        assert np.all(lz <= svd * (1 + 1e-5)), cell
        np.testing.assert_allclose(lz, svd, rtol=3e-2, err_msg=cell)
        np.testing.assert_allclose(np.mean(lz), np.mean(svd), rtol=2e-3, err_msg=cell)


def test_monitor_cheap_mode_keeps_the_exact_numbers_it_does_not_approximate(tiny_config):
    """Above ``EXACT_MAX`` (forced here with ``exact=False``) the full spectrum is the first
    probe's, the same numbers as the exact monitor's for that probe, and the step norms are
    Lanczos's: at n = 16 <= 16 steps the Krylov space is all of R^n, so they equal the SVD's.
    Everything else is untouched; the row says which way it was measured."""
    from rnn_spectra.spectral.monitor import SpectralMonitor
    from rnn_spectra.train import build, init_state

    tiny_config.model.cell = "lstm"
    tiny_config.spectral.lyapunov_k = 3
    exp = build(config_lib.resolve(tiny_config))
    params = init_state(exp, 0)["params"]
    exact, cheap = SpectralMonitor(exp, exact=True), SpectralMonitor(exp, exact=False)
    a, b = exact.measure(params, 0), cheap.measure(params, 0)
    assert (a["step_norm/method"], a["lyapunov/full_probes"]) == ("svd", 4)
    assert (b["step_norm/method"], b["lyapunov/full_probes"]) == ("lanczos16", 1)
    for name in ("near_zero", "kaplan_yorke"):
        np.testing.assert_allclose(b[f"lyapunov/{name}/per_probe"], a[f"lyapunov/{name}/per_probe"][:1],
                                   rtol=1e-5, err_msg=name)
        assert b[f"lyapunov/{name}/mean"] == b[f"lyapunov/{name}/per_probe"][0]
    np.testing.assert_allclose(b["step_norm/per_probe"], a["step_norm/per_probe"], rtol=1e-4)
    for key in a:
        if not key.startswith(("step_norm", "lyapunov/near_zero", "lyapunov/kaplan_yorke",
                               "lyapunov/full_probes")):
            assert a[key] == b[key], key


def _pixels(steps=48, lead=20, seed=0):
    """A pixel-MNIST-like sequence: ``lead`` blank pixels, then values in [0, 1], a third blank."""
    x = np.array(jax.random.uniform(jax.random.PRNGKey(seed), (steps, 1)))
    x[:lead] = 0.0
    x[x < 0.3] = 0.0
    return jnp.asarray(x)


@pytest.mark.parametrize("cell", ["irnn", "relu_rnn", "exprnn"])
def test_relu_type_cells_have_finite_spectra_from_the_zero_state(tiny_config, cell):
    """Issue #14: with zero state, zero bias and blank leading pixels, relu'(0) = modReLU'(0) = 0
    makes the first Jacobians exactly 0, so lambda_1 and the full-lag norm were -inf at init (and
    stayed so on pixel MNIST). Measured after the dead prefix they are finite, at init and after
    a few training steps, on digits and on pixel-like inputs."""
    from rnn_spectra.spectral.monitor import SpectralMonitor, sequence_measurements
    from rnn_spectra.train import build, init_state, make_train_step

    tiny_config.task.name, tiny_config.task.seq_len = "digits", 64
    # H = 32 as in the issue (at H = 6 a relu_rnn's state can collapse to exactly zero mid-sequence:
    # then the gradient through that step is exactly 0, and -inf is the true answer).
    tiny_config.model.cell, tiny_config.model.hidden_size = cell, 32
    tiny_config.spectral.lyapunov_k = 2
    exp = build(config_lib.resolve(tiny_config))
    monitor = SpectralMonitor(exp)
    state = init_state(exp, 0)
    assert float(jnp.max(jnp.abs(state["params"]["cell"]["b"]))) <= 0.01  # zero bias (exprnn: +-0.01)
    pixels = _pixels()
    on_pixels = jax.jit(lambda p: sequence_measurements(make_step_fn(exp.model, p["cell"]), pixels,
                                                        [1, 8, 48], discard=4, k=2))
    train_step = jax.jit(make_train_step(exp))
    for when in ("init", "after 3 steps"):
        row = monitor.measure(state["params"], 0)
        assert row["lags"][-1] == 64
        assert np.isfinite(row["lyapunov/mean"][0]) and np.isfinite(row["jac_log_norm/mean"][-1]), when
        assert np.all(np.isfinite(row["lyapunov/per_probe"])[:, 0])
        assert 0 < row["step_norm/mean"] < 10 and 0 <= row["dead_units/mean"] < 1
        m = on_pixels(state["params"])
        assert np.isfinite(m["lyap"][0]) and np.isfinite(m["jac"][-1]), when
        if when == "init":  # the issue is exercised: a dead prefix, and -inf from step 0
            assert min(row["dead_prefix/per_probe"]) > 0 and int(m["t0"]) >= 20
            assert row["lyapunov/start/per_probe"] == [t + 16 for t in row["dead_prefix/per_probe"]]
            cs = make_step_fn(exp.model, state["params"]["cell"])
            assert np.isneginf(lyapunov_spectrum(cs.step_fn, cs.s0, pixels, 1)[0])
            assert np.isneginf(lag_log_norms(cs.step_fn, cs.s0, pixels, [48])[0])
        for _ in range(3):
            state, _ = train_step(state)


# ----------------------------------------------------------------------------- gradient flow
@pytest.mark.parametrize("cell,task_name", [("lstm", "adding"), ("relu_rnn", "copying"), ("gru", "adding")])
def test_gradient_flow_matches_adjoint_recursion(cell, task_name):
    """One backward pass through zero perturbations == the adjoint recursion
    a_t = dL/ds_t|partial + a_{t+1} J[t+1] with explicit per-sequence Jacobians."""
    task = get_task(config_lib.TaskConfig(task_name, 4))
    model = SequenceModel(ModelConfig(cell=cell, hidden_size=3, bias_init=0.1),
                          task.input_size, task.output_size, task.readout)
    params = tiny_params(model)
    inputs, targets = task.batch(jax.random.PRNGKey(3), 2)
    flow = np.asarray(model_gradient_flow(model, params, inputs, targets, task.loss))
    steps = inputs.shape[1]
    assert flow.shape == (steps,)
    cs = make_step_fn(model, params["cell"])
    states = jax.vmap(lambda xs: trajectory(cs.step_fn, cs.s0, xs)[1:], out_axes=1)(inputs)  # (T, B, n)
    J = np.asarray(jax.vmap(lambda xs: step_jacobians(cs.step_fn, cs.s0, xs))(inputs))  # (B, T, n, n)

    def loss_of_states(st):  # every state an independent variable: partial derivatives only
        out = model.head.apply({"params": params["readout"]}, jax.vmap(jax.vmap(cs.hidden))(st))
        return task.loss(out[-1] if model.readout == "last" else jnp.swapaxes(out, 0, 1), targets)

    partial = np.asarray(jax.grad(loss_of_states)(states))
    adj = partial.copy()
    for t in range(steps - 2, -1, -1):  # states[t] = s_{t+1}; ds_{t+2}/ds_{t+1} = J[t+1]
        adj[t] += np.einsum("bi,bij->bj", adj[t + 1], J[:, t + 1])
    ref = np.sqrt(np.sum(adj.reshape(steps, -1) ** 2, axis=1))
    np.testing.assert_allclose(flow, ref, rtol=2e-4, atol=1e-7)
    assert np.ptp(np.log(flow)) > 0.1  # not a constant profile


def test_gradient_flow_equals_cotangent_times_jacobian_products():
    """Readout at the last step: dL/ds_t = dL/ds_T @ P[t], P from ``jacobian_products``."""
    model = tiny_model("tanh_rnn", hidden=4)
    cs = make_step_fn(model, tiny_params(model)["cell"])
    xs = _xs(steps=9)
    target = jnp.arange(4.0)
    loss = lambda states: jnp.sum((states[-1] - target) ** 2)  # noqa: E731
    flow = gradient_flow(cs.step_fn, cs.s0, xs, loss)
    states = trajectory(cs.step_fn, cs.s0, xs)
    g_T = jax.grad(lambda s: jnp.sum((s - target) ** 2))(states[-1])
    P = jacobian_products(step_jacobians(cs.step_fn, cs.s0, xs))
    # flow[t-1] belongs to s_t; P[t] = ds_T/ds_t, and ds_T/ds_T = I.
    ref = [np.linalg.norm(g_T @ P[t]) for t in range(1, 9)] + [np.linalg.norm(g_T)]
    np.testing.assert_allclose(flow, ref, rtol=1e-5)


# ----------------------------------------------------------------------------- matrices
def test_matrix_spectrum_and_device_spectral_radius():
    rng = np.random.default_rng(2)
    cases = [rng.normal(size=(12, 12)) / 3, np.linalg.qr(rng.normal(size=(6, 6)))[0],
             np.triu(rng.normal(size=(5, 5)), 1), np.array([[0.5, 50.0], [0.0, 0.5]])]
    for W in cases:
        spec = matrix_spectrum(W)
        eig = np.linalg.eigvals(W)
        np.testing.assert_allclose(spec["spectral_radius"], np.max(np.abs(eig)), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(spec["singular_values"], np.linalg.svd(W, compute_uv=False))
        np.testing.assert_allclose(float(spectral_radius(jnp.asarray(W, jnp.float32))),
                                   spec["spectral_radius"], rtol=1e-4, atol=1e-6)
        assert np.all(np.diff(np.abs(spec["eigenvalues"])) <= 1e-12)
    assert matrix_spectrum(np.diag([2.0, 0.0]))["condition_number"] == float("inf")
    assert matrix_spectrum(np.diag([2.0, 0.5]))["condition_number"] == pytest.approx(4.0)


# ----------------------------------------------------------------------------- bad input
def test_bad_inputs_raise_one_line_errors():
    model = tiny_model("lstm")
    params = tiny_params(model)
    cs = make_step_fn(model, params["cell"])
    with pytest.raises(SpectralInputError, match=r"k=9 Lyapunov exponents .* n=6 dimensions; choose 1 <= k <= 6"):
        lyapunov_spectrum(cs.step_fn, cs.s0, _xs(), k=9)
    with pytest.raises(SpectralInputError, match=r"input step must have shape \(2,\)"):
        step_jacobians(cs.step_fn, cs.s0, jnp.zeros((T, 3)))
    with pytest.raises(SpectralInputError, match=r"state must have shape \(6,\)"):
        step_jacobians(cs.step_fn, jnp.zeros(3), _xs())
    other = tiny_model("lstm", hidden=5)
    with pytest.raises(SpectralInputError, match=r"\['W_s'\] \(12, 3\) \(expected \(20, 5\)\)"):
        make_step_fn(other, params["cell"])
    with pytest.raises(SpectralInputError, match=r"lags must be integers in \[1, 7\]"):
        lag_log_norms(cs.step_fn, cs.s0, _xs(), [0, 3])
    with pytest.raises(SpectralInputError, match=r"J must have shape \(T, n, n\)"):
        product_log_singular_values(jnp.zeros((4, 3, 2)))
    with pytest.raises(SpectralInputError, match="unknown method 'foo'"):
        jacobian_products(jnp.zeros((2, 3, 3)), method="foo")
    with pytest.raises(SpectralInputError, match="reorth_every must be a positive int"):
        lyapunov_from_jacobians(jnp.zeros((2, 3, 3)), reorth_every=0)
    assert issubclass(SpectralInputError, UserError) and issubclass(SpectralInputError, ValueError)


def test_monitor_refuses_more_exponents_than_states(tiny_config):
    from rnn_spectra.spectral.monitor import SpectralMonitor
    from rnn_spectra.train import build

    tiny_config.spectral.lyapunov_k = 9  # hidden_size 8, tanh: n = 8
    with pytest.raises(ConfigError, match="lyapunov_k=9 exceeds the state size n=8"):
        SpectralMonitor(build(config_lib.resolve(tiny_config)))


# ----------------------------------------------------------------------------- monitor and analyze
def test_monitor_row_is_consistent_and_vmaps(tiny_config):
    from rnn_spectra.spectral.monitor import SpectralMonitor, probe_batch
    from rnn_spectra.train import build, init_state

    tiny_config.model.cell = "lstm"
    tiny_config.spectral.lyapunov_k = 3
    tiny_config.spectral.grad_flow_points = 4
    exp = build(config_lib.resolve(tiny_config))
    monitor = SpectralMonitor(exp)
    params = init_state(exp, 0)["params"]
    row = monitor.measure(params, 7)
    json.loads(json.dumps(row))  # JSON-able as it is
    assert row["step"] == 7
    for gate in ("W_i", "W_f", "W_g", "W_o"):
        assert len(row[f"sv/{gate}"]) == 8 and row[f"sv/{gate}"] == sorted(row[f"sv/{gate}"], reverse=True)
        assert row[f"spectral_radius/{gate}"] > 0
    lags = row["lags"]
    assert lags[0] == 1 and lags[-1] == 10 and len(lags) <= tiny_config.spectral.num_lags
    assert np.shape(row["jac_log_norm/per_probe"]) == (tiny_config.spectral.probe_batch_size, len(lags))
    assert len(row["lyapunov/mean"]) == 3
    assert row["grad_flow/t"] == [1, 4, 7, 10] and len(row["grad_flow/log_norm"]) == 4
    # The monitor's matrix-free lag norms equal the top singular values of the explicit products.
    inputs, _ = probe_batch(exp)
    cs = make_step_fn(exp.model, params["cell"])
    J0 = step_jacobians(cs.step_fn, cs.s0, inputs[0])
    top = product_log_singular_values(J0, lags=lags)[:, 0]
    np.testing.assert_allclose(row["jac_log_norm/per_probe"][0], top, rtol=1e-4, atol=1e-4)
    # The effective one-step norm: the mean spectral norm of the step Jacobians over the window
    # (no dead prefix for an LSTM: from the burn-in on, round(0.25 T) = 2 steps at T = 10).
    assert row["lyapunov/discard"] == 2 and row["lyapunov/start/per_probe"] == [2] * 4
    assert row["dead_prefix/per_probe"] == [0] * 4 and row["lyapunov/computed"] == 16
    norms = np.linalg.norm(np.asarray(J0, np.float64), 2, axis=(1, 2))
    np.testing.assert_allclose(row["step_norm/per_probe"][0], norms[2:].mean(), rtol=1e-5)
    assert 0 <= row["lyapunov/near_zero/mean"] <= 16 and row["lyapunov/kaplan_yorke/mean"] >= 0
    # A sweep vmaps the arrays over stacked members: same numbers as one member at a time.
    other = init_state(exp, 1)["params"]
    stacked = jax.tree_util.tree_map(lambda a, b: jnp.stack([a, b]), params, other)
    both = jax.vmap(monitor.measure_arrays)(stacked)
    single = monitor.measure_arrays(other)
    for key, value in single.items():
        np.testing.assert_allclose(both[key][1], value, rtol=1e-4, atol=1e-5, err_msg=key)
    member_row = monitor.to_row(jax.tree_util.tree_map(lambda a: np.asarray(a)[1], both), 7)
    assert member_row.keys() == monitor.measure(other, 7).keys()


@pytest.mark.parametrize("task_name,seed", [("adding", 0), ("copying", 0), ("adding", 2**31 - 1)])
def test_probe_batch_is_the_eager_draw_bit_for_bit(tiny_config, task_name, seed):
    """The probe batch comes from one jitted program that derives the key from the seed itself;
    its numbers must be exactly those of drawing it op by op, as runs recorded before did. Drawn
    first inside a trace (a monitor used under jit or vmap), it is still a concrete array."""
    from rnn_spectra.spectral.monitor import SpectralMonitor, probe_batch
    from rnn_spectra.train import build
    from rnn_spectra.rng import PROBE_STREAM, stream_key

    tiny_config.task.name, tiny_config.seed = task_name, seed
    exp = build(config_lib.resolve(tiny_config))
    eager = exp.task.batch(stream_key(seed, PROBE_STREAM), tiny_config.spectral.probe_batch_size)
    for got, want in zip(probe_batch(exp), eager, strict=True):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    monitor = SpectralMonitor(exp)
    jax.jit(lambda: monitor.inputs.sum())()
    assert not isinstance(monitor.inputs, jax.core.Tracer)
    np.testing.assert_array_equal(np.asarray(monitor.inputs), np.asarray(eager[0]))


def test_monitor_refuses_params_of_another_size(tiny_config):
    """Params of another hidden size reach the caller of ``measure`` as a one-line input error."""
    from rnn_spectra.spectral.monitor import SpectralMonitor
    from rnn_spectra.train import build, init_state

    tiny_config.spectral.lyapunov_k = 2
    exp = build(config_lib.resolve(tiny_config))
    tiny_config.model.hidden_size = 6
    wrong = init_state(build(config_lib.resolve(tiny_config)), 0)["params"]
    with pytest.raises(SpectralInputError, match="hidden_size"):
        SpectralMonitor(exp).measure(wrong, 0)


def _train_tiny(workdir, every=3):
    from rnn_spectra import cli

    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    args = ["train", "--config", os.path.join(here, "configs", "adding.py"), "--workdir", workdir,
            "--config.task.seq_len=6", "--config.model.hidden_size=4", "--config.train.steps=6",
            "--config.train.batch_size=4", "--config.train.eval_every=6", "--config.train.eval_batches=1",
            "--config.train.eval_batch_size=8", "--config.train.log_every=3",
            "--config.train.progress=false", f"--config.spectral.every={every}",
            "--config.spectral.lyapunov_k=2"]
    assert cli.main(args) == 0


def test_analyze_cli_end_to_end(tmp_path, capsys):
    from rnn_spectra import cli
    from rnn_spectra import workdir as wd

    run = str(tmp_path / "run")
    _train_tiny(run)
    rows = wd.read_jsonl(os.path.join(run, wd.SPECTRA))
    assert [r["step"] for r in rows] == [0, 3, 6]
    out = str(tmp_path / "figs")
    assert cli.main(["analyze", "--workdir", run, "--out", out]) == 0
    npz = np.load(os.path.join(out, "spectra_step6.npz"))
    assert int(npz["step"]) == 6
    L = len(npz["lags"])
    assert npz["product_log_sv"].shape == (4, L, 4) and npz["lyapunov"].shape == (4, 4)
    assert npz["grad_flow_log_norm"].shape == (6,) and npz["sv/W_s"].shape == (4,)
    # analyze (graded SVD of explicit Jacobians) agrees with the monitor (matrix-free VJPs).
    np.testing.assert_allclose(npz["jac_log_norm"], rows[-1]["jac_log_norm/per_probe"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(npz["grad_flow_log_norm"], rows[-1]["grad_flow/log_norm"], rtol=1e-4, atol=1e-4)
    for name in ("w_singular_values", "jacobian_norm_vs_lag", "product_spectrum_vs_lag",
                 "lyapunov_spectrum", "gradient_flow"):
        assert os.path.getsize(os.path.join(out, f"{name}.png")) > 10_000
    capsys.readouterr()

    # Bad input: one line on stderr, exit code 2, naming what is available.
    assert cli.main(["analyze", "--workdir", run, "--step", "4"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no checkpoint at step 4" in err and "available: [6]" in err and "\n" not in err
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / wd.CONFIG).write_text(open(os.path.join(run, wd.CONFIG)).read())
    assert cli.main(["analyze", "--workdir", str(bare)]) == 2
    assert "no checkpoints in" in capsys.readouterr().err
    assert cli.main(["analyze", "--workdir", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (bare / wd.CHECKPOINTS).exists()  # analysing never creates run files
