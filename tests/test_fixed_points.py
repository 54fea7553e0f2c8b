"""Fixed points (Sussillo & Barak 2013) against cases solved on paper, and the optimiser against
the exact enumeration of a ReLU RNN's activation patterns."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnn_spectra.cells import CELLS
from rnn_spectra.model import ModelConfig, SequenceModel
from rnn_spectra.dynamics import make_step_fn
from rnn_spectra.errors import SpectralInputError
from rnn_spectra.spectral.fixed_points import (
    candidates_from_trajectories,
    enumerate_relu_fixed_points,
    find_fixed_points,
    fixed_points_of_run,
    patterns_from_states,
    relu_fixed_points,
)


def _all_patterns(h):
    return np.array(list(itertools.product([False, True], repeat=h)))


def _nearest(points, p):
    if len(points) == 0:
        return np.inf
    return float(np.min(np.linalg.norm(np.asarray(points, np.float64) - p, axis=1)))


def test_affine_map_unique_fixed_point_and_spectrum():
    rng = np.random.default_rng(0)
    A = rng.normal(size=(4, 4))
    A = 0.8 * A / np.max(np.abs(np.linalg.eigvals(A)))  # spectral radius 0.8: a global attractor
    b = rng.normal(size=4)
    Aj, bj = jnp.asarray(A, jnp.float32), jnp.asarray(b, jnp.float32)
    cand = jnp.asarray(3.0 * rng.normal(size=(12, 4)), jnp.float32)
    fps = find_fixed_points(lambda s, x: Aj @ s + bj, jnp.zeros(1), cand, steps=300)
    star = np.linalg.solve(np.eye(4) - A, b)
    assert fps.converged.all() and not fps.slow.any()
    assert fps.points.shape == (1, 4) and fps.all_points.shape == (12, 4)
    np.testing.assert_allclose(fps.points[0], star, atol=1e-4)
    np.testing.assert_allclose(fps.all_points, np.broadcast_to(star, (12, 4)), atol=1e-4)
    want = np.linalg.eigvals(A)
    got = fps.eigenvalues[0]
    np.testing.assert_allclose(np.abs(got), np.sort(np.abs(want))[::-1], atol=1e-5)  # sorted by |lambda|
    assert all(np.min(np.abs(got - w)) < 1e-5 for w in want)
    np.testing.assert_allclose(fps.jacobians[0], A, atol=1e-6)
    assert fps.num_unstable[0] == 0 and not fps.line_attractor[0]
    # Each leading eigenvector is one: J v = lambda v.
    v, lam = fps.eigenvectors[0], fps.eigenvalues[0, :3]
    np.testing.assert_allclose(A @ v, v * lam, atol=1e-5)


def test_tanh_1d_three_fixed_points():
    s_star = 1.0  # s = tanh(2 s) by Newton in float64
    for _ in range(50):
        s_star -= (np.tanh(2 * s_star) - s_star) / (2 * (1 - np.tanh(2 * s_star) ** 2) - 1)
    assert abs(s_star - 0.9575) < 1e-4
    cand = jnp.linspace(-2.0, 2.0, 41)[:, None]
    fps = find_fixed_points(lambda s, x: jnp.tanh(2.0 * s), jnp.zeros(1), cand, steps=500)
    order = np.argsort(fps.points[:, 0])
    pts, eig, unstable = fps.points[order, 0], fps.eigenvalues[order, 0], fps.num_unstable[order]
    np.testing.assert_allclose(pts, [-s_star, 0.0, s_star], atol=1e-5)
    # F'(s) = 2 (1 - tanh^2(2s)) = 2 (1 - s^2) at a fixed point: 2 at 0, ~0.166 at +-s*.
    np.testing.assert_allclose(eig.real, [2 * (1 - s_star**2), 2.0, 2 * (1 - s_star**2)], atol=1e-4)
    np.testing.assert_array_equal(unstable, [0, 1, 0])
    assert fps.converged.all()


def test_ghost_of_saddle_node_is_a_slow_point():
    # F(s) = s + a + s^2 with a = 0.003 > 0 has no fixed point (s = F(s) needs s^2 = -a), but the
    # speed q = (a + s^2)^2 / 2 has its minimum a^2 / 2 = 4.5e-6 at s = 0: the ghost of the
    # saddle-node at a = 0, a slow point. Newton-type steps from near 0 jump far (r has no root),
    # so this also checks that the refinement only keeps steps that lower q.
    a = 0.003
    cand = jnp.linspace(-0.3, 0.3, 13)[:, None]
    fps = find_fixed_points(lambda s, x: s + a + s**2, jnp.zeros(1), cand, steps=2000)
    assert not fps.converged.any() and fps.slow.all()
    assert len(fps.points) == 0 and fps.eigenvalues.shape == (0, 1)
    np.testing.assert_allclose(fps.all_q, a**2 / 2, rtol=1e-2)
    assert np.all(np.abs(fps.slow_points) < 0.05) and len(fps.slow_points) >= 1


# A 2-unit ReLU RNN, h' = relu(W h + b), W = [[0.5, 0.5], [0, 2]], b = [1, -1], worked out by hand:
#  unit 0 on, unit 1 off: h1 = 0, h0 = 0.5 h0 + 1 -> h0 = 2; z1 = 0*2 + 2*0 - 1 = -1 <= 0. Fixed point
#    (2, 0); Jacobian D W = [[0.5, 0.5], [0, 0]], eigenvalues 0.5, 0: stable.
#  both on: h1 = 2 h1 - 1 -> h1 = 1; h0 = 0.5 h0 + 0.5 + 1 -> h0 = 3; z = (3, 1) > 0. Fixed point
#    (3, 1); Jacobian W, eigenvalues 0.5, 2: a saddle (one unstable direction).
#  unit 0 off: h0 = 0 needs z0 = 0.5 h1 + 1 <= 0, impossible with h1 >= 0. No fixed point.
W2 = np.array([[0.5, 0.5], [0.0, 2.0]])
B2 = np.array([1.0, -1.0])
KNOWN2 = np.array([[2.0, 0.0], [3.0, 1.0]])


def test_relu_2unit_enumeration_and_optimiser():
    res = enumerate_relu_fixed_points(W2, np.zeros((1, 2)), B2, np.zeros(1), _all_patterns(2))
    assert (res.num_tried, res.num_singular, res.num_found) == (4, 0, 2)
    order = np.argsort(res.points[:, 0])
    np.testing.assert_allclose(res.points[order], KNOWN2, atol=1e-12)
    np.testing.assert_array_equal(res.patterns[order], [[True, False], [True, True]])
    np.testing.assert_array_equal(res.num_unstable[order], [0, 1])
    np.testing.assert_allclose(np.abs(res.eigenvalues[order]), [[0.5, 0.0], [2.0, 0.5]], atol=1e-12)
    np.testing.assert_allclose(res.jacobians[order][0], [[0.5, 0.5], [0.0, 0.0]])

    Wj, bj = jnp.asarray(W2, jnp.float32), jnp.asarray(B2, jnp.float32)
    grid = jnp.stack(jnp.meshgrid(jnp.linspace(-1, 4, 6), jnp.linspace(-1, 3, 5)), -1).reshape(-1, 2)
    fps = find_fixed_points(lambda s, x: jax.nn.relu(Wj @ s + bj), jnp.zeros(1), grid, steps=500)
    assert len(fps.points) >= 1
    for p in fps.points:
        assert _nearest(KNOWN2, p) < 1e-3, p
    assert _nearest(fps.points, KNOWN2[0]) < 1e-3  # the attractor is found from this grid


def _relu_model(h=6):
    return SequenceModel(ModelConfig(cell="relu_rnn", hidden_size=h, init_scale=2.0, bias_init=-0.1),
                         2, 1, "last")


def test_enumeration_agrees_with_optimiser_on_a_relu_model():
    model = _relu_model()
    params = model.init(jax.random.PRNGKey(0))  # seed 0: 4 fixed points, 1 stable (checked below)
    c = params["cell"]
    full = enumerate_relu_fixed_points(c["W_s"], c["W_x"], c["b"], np.zeros(2), _all_patterns(6))
    assert full.num_tried == 64 and len(full.points) == 4 and np.sum(full.num_unstable == 0) == 1
    # Each enumerated point is a fixed point of the model's own step (float32).
    cs = make_step_fn(model, c)
    for p in full.points:
        np.testing.assert_allclose(cs.step_fn(jnp.asarray(p, jnp.float32), jnp.zeros(2)), p, atol=1e-5)
    # From candidates near each enumerated point the optimiser lands on it (stable ones at least),
    # and every point it calls converged is one of the enumerated ones.
    cand = np.repeat(full.points, 3, axis=0) + 1e-3 * np.random.default_rng(1).normal(size=(12, 6))
    fps = find_fixed_points(cs.step_fn, jnp.zeros(2), jnp.asarray(cand, jnp.float32), steps=200)
    for p in full.points[full.num_unstable == 0]:
        assert _nearest(fps.points, p) < 1e-3
    for p, q in zip(fps.all_points, fps.all_q):
        if q < 1e-10:
            assert _nearest(full.points, p) < 1e-3, (p, q)
    # Through the model-level wrapper: same agreement, and the patterns seen are a subset.
    inputs = jax.random.normal(jax.random.PRNGKey(100), (4, 20, 2))
    out = fixed_points_of_run(model, params, inputs, num_candidates=32, steps=300)
    assert out["fp/all_q"].min() < 1e-10
    for p, q in zip(out["fp/all_points"], out["fp/all_q"]):
        if q < 1e-10:
            assert _nearest(full.points, p) < 1e-3
    assert 1 <= len(out["fp_relu/points"]) <= 4
    for p in out["fp_relu/points"]:
        assert _nearest(full.points, p) < 1e-9
    states = out["states"]
    via = relu_fixed_points(model, c, states)
    assert via.num_tried == len(patterns_from_states(states, c["W_s"], c["W_x"], c["b"], np.zeros(2)))


def test_singular_patterns_counted():
    # W = I (IRNN at init): the all-on pattern's system I - W is singular (with b = 0 a continuum).
    res = enumerate_relu_fixed_points(np.eye(3), np.zeros((1, 3)), np.zeros(3), np.zeros(1), _all_patterns(3))
    assert res.num_tried == 8 and res.num_singular == 7  # every pattern with a unit on is singular
    np.testing.assert_allclose(res.points, np.zeros((1, 3)))


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_every_cell_through_fixed_points_of_run(cell):
    h, n_cand = 4, 16
    model = SequenceModel(ModelConfig(cell=cell, hidden_size=h), 2, 1, "last")
    params = model.init(jax.random.PRNGKey(0))
    inputs = jax.random.normal(jax.random.PRNGKey(1), (2, 10, 2))
    out = fixed_points_of_run(model, params, inputs, num_candidates=n_cand, steps=100, refine_steps=5)
    n = 2 * h if cell == "lstm" else h
    m = len(out["fp/points"])
    assert out["fp/all_points"].shape == (n_cand, n) and out["fp/all_q"].shape == (n_cand,)
    assert np.all(np.isfinite(out["fp/all_q"])) and np.all(out["fp/all_q"] >= 0)
    assert out["fp/points"].shape == (m, n) and out["fp/jacobians"].shape == (m, n, n)
    assert out["fp/eigenvalues"].shape == (m, n) and out["fp/eigenvectors"].shape == (m, n, 3)
    assert out["states"].shape == (1 + 2 * 10, n) and out["x"].shape == (2,)
    assert np.array_equal(out["fp/converged"], out["fp/all_q"] <= 1e-9)
    assert ("fp_relu/points" in out) == (cell in ("relu_rnn", "irnn"))


def test_bad_input_raises_spectral_input_error():
    model = _relu_model(h=3)
    cs = make_step_fn(model, model.init(jax.random.PRNGKey(0))["cell"])
    x, good = jnp.zeros(2), jnp.zeros((4, 3))
    with pytest.raises(SpectralInputError, match=r"state must have shape \(3,\)"):
        find_fixed_points(cs.step_fn, x, jnp.zeros((4, 5)))
    with pytest.raises(SpectralInputError, match=r"input step must have shape \(2,\)"):
        find_fixed_points(cs.step_fn, jnp.zeros(3), good)
    A = jnp.eye(4)
    with pytest.raises(SpectralInputError, match=r"does not accept a state of shape \(5,\)"):
        find_fixed_points(lambda s, x: A @ s, jnp.zeros(1), jnp.zeros((2, 5)))
    with pytest.raises(SpectralInputError, match=r"candidates must have shape \(K, n\)"):
        find_fixed_points(cs.step_fn, x, jnp.zeros(3))
    with pytest.raises(SpectralInputError, match=r"x must be one constant input step of shape \(D,\)"):
        find_fixed_points(cs.step_fn, jnp.zeros((1, 2)), good)
    with pytest.raises(SpectralInputError, match="at least one candidate"):
        find_fixed_points(cs.step_fn, x, jnp.zeros((0, 3)))
    for bad in (0.0, -1e-9, float("nan"), float("inf")):
        with pytest.raises(SpectralInputError, match="tol_q must be a finite number > 0"):
            find_fixed_points(cs.step_fn, x, good, tol_q=bad)
    with pytest.raises(SpectralInputError, match="tol_unique must be a finite number > 0"):
        find_fixed_points(cs.step_fn, x, good, tol_unique=float("nan"))
    tanh = SequenceModel(ModelConfig(cell="tanh_rnn", hidden_size=3), 2, 1, "last")
    with pytest.raises(SpectralInputError, match=r"needs a ReLU Elman cell .*got cell 'tanh_rnn'"):
        relu_fixed_points(tanh, tanh.init(jax.random.PRNGKey(0))["cell"], np.zeros((5, 3)))
    with pytest.raises(SpectralInputError, match=r"patterns must have shape \(P, 2\)"):
        enumerate_relu_fixed_points(W2, np.zeros((1, 2)), B2, np.zeros(1), np.zeros((3, 5), bool))
    with pytest.raises(SpectralInputError, match=r"x must have shape \(1,\)"):
        enumerate_relu_fixed_points(W2, np.zeros((1, 2)), B2, np.zeros(2), _all_patterns(2))


def test_candidates_from_trajectories():
    states = jnp.arange(30.0).reshape(5, 2, 3)  # (T, B, n)
    cand = candidates_from_trajectories(states, 8, 0.0, jax.random.PRNGKey(0))
    rows = {tuple(r) for r in np.asarray(states).reshape(-1, 3)}
    assert cand.shape == (8, 3) and len({tuple(r) for r in np.asarray(cand)}) == 8  # no repeats
    assert all(tuple(r) in rows for r in np.asarray(cand))
    noisy = candidates_from_trajectories(states, 20, 0.5, jax.random.PRNGKey(0))  # > 10: with replacement
    assert noisy.shape == (20, 3) and not any(tuple(r) in rows for r in np.asarray(noisy))


def test_figure_and_savez(tmp_path):
    model = _relu_model(h=4)
    params = model.init(jax.random.PRNGKey(0))
    out = fixed_points_of_run(model, params, jax.random.normal(jax.random.PRNGKey(1), (2, 10, 2)),
                              num_candidates=16, steps=100)
    from rnn_spectra import plots

    path = plots.save(plots.fixed_points(out, out["states"]), str(tmp_path / "fp.png"))
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    np.savez(tmp_path / "fp.npz", **out)
    with np.load(tmp_path / "fp.npz") as z:
        np.testing.assert_array_equal(z["fp/all_q"], out["fp/all_q"])
        assert int(z["fp_relu/num_tried"]) == int(out["fp_relu/num_tried"])
