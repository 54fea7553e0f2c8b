"""SequenceModel: the scan equals a Python loop over the cell's one-step API, for every cell and
every unroll/remat setting, in value and in gradient; readouts; carries."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnn_spectra.cells import CELLS
from rnn_spectra.config import ModelConfig
from rnn_spectra.model import SequenceModel, count_params

B, T, D, H, O = 3, 7, 2, 6, 4


def python_loop(model, params, inputs):
    """Reference: the cell's one-step ``__call__`` applied T times (no scan, no fast path)."""
    carry = model.initial_carry((inputs.shape[0],))
    hs, carries = [], []
    for t in range(inputs.shape[1]):
        carry, h = model.cell.apply({"params": params["cell"]}, carry, inputs[:, t])
        hs.append(h)
        carries.append(carry)
    stacked = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *carries)
    return jnp.stack(hs), stacked


def make(cell, readout="last", **kw):
    cfg = ModelConfig(cell=cell, hidden_size=H, bias_init=0.1, **kw)
    return SequenceModel(cfg, D, O, readout)


def inputs_BxTxD(seed=1):
    return jax.random.normal(jax.random.PRNGKey(seed), (B, T, D))


# unroll 3 does not divide T (remainder steps); remat with unroll exercises both together.
SETTINGS = [dict(unroll=1), dict(unroll=3), dict(remat=True, unroll=2)]


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_scan_equals_python_loop(cell):
    """Hidden states and carries of every unroll/remat setting equal the step-by-step loop."""
    x = inputs_BxTxD()
    params = make(cell).init(jax.random.PRNGKey(0))
    hs_ref, carries_ref = jax.jit(lambda p, x: python_loop(make(cell), p, x))(params, x)
    for setting in SETTINGS:
        model = make(cell, **setting)
        both = jax.jit(lambda p, x: (model.unroll(p, x, return_carries=True), model.unroll(p, x)))
        (hs, carries), (hs_only, none) = both(params["cell"], x)
        assert hs.shape == (T, B, H)
        np.testing.assert_allclose(hs, hs_ref, rtol=1e-5, atol=1e-6, err_msg=str(setting))
        for got, want in zip(jax.tree_util.tree_leaves(carries), jax.tree_util.tree_leaves(carries_ref)):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=str(setting))
        assert none is None
        np.testing.assert_allclose(hs_only, hs_ref, rtol=1e-5, atol=1e-6, err_msg=str(setting))


CORE_CELLS = ("tanh_rnn", "relu_rnn", "irnn", "lstm", "gru")


@pytest.mark.parametrize("cell", [c if c in CORE_CELLS else pytest.param(c, marks=pytest.mark.slow)
                                  for c in sorted(CELLS)])
def test_scan_gradient_equals_python_loop_gradient(cell):
    x = inputs_BxTxD()
    w = jax.random.normal(jax.random.PRNGKey(5), (B, T, O))
    params = make(cell).init(jax.random.PRNGKey(0))

    def loss_loop(p, x):
        model = make(cell, readout="all")
        hs, _ = python_loop(model, p, x)
        out = jnp.swapaxes(model.head.apply({"params": p["readout"]}, hs), 0, 1)
        return jnp.sum(w * out) + jnp.sum(out[:, -1] ** 2)

    g_loop = jax.jit(jax.grad(loss_loop, argnums=(0, 1)))(params, x)
    for setting in SETTINGS[1:]:  # unroll=1 differs from unroll=3 only in the loop's shape
        model = make(cell, readout="all", **setting)

        def loss_scan(p, x):
            out = model.apply(p, x)
            return jnp.sum(w * out) + jnp.sum(out[:, -1] ** 2)

        g_scan = jax.jit(jax.grad(loss_scan, argnums=(0, 1)))(params, x)
        for (path, got), want in zip(jax.tree_util.tree_leaves_with_path(g_scan),
                                     jax.tree_util.tree_leaves(g_loop)):
            name = f"{setting} {jax.tree_util.keystr(path)}"
            np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-5, err_msg=name)
            assert np.any(np.asarray(want) != 0), name


@pytest.mark.parametrize("cell", ["tanh_rnn", "lstm"])
def test_forward_mode_through_unroll_equals_loop(cell):
    """jvp/jacfwd through the whole unroll (the spectral code may differentiate carries forward)."""
    model = make(cell)
    params = model.init(jax.random.PRNGKey(0))
    x = inputs_BxTxD()
    tangent = jax.tree_util.tree_map(jnp.ones_like, params["cell"])
    _, t_scan = jax.jvp(lambda p: model.unroll(p, x)[0], (params["cell"],), (tangent,))
    _, t_loop = jax.jvp(lambda p: python_loop(model, {"cell": p}, x)[0], (params["cell"],), (tangent,))
    np.testing.assert_allclose(t_scan, t_loop, rtol=1e-4, atol=1e-5)


def test_readouts_last_and_all():
    x = inputs_BxTxD()
    last = make("gru", "last")
    params = last.init(jax.random.PRNGKey(0))
    hs_ref, _ = python_loop(last, params, x)
    out = last.apply(params, x)
    assert out.shape == (B, O)
    k, b = params["readout"]["kernel"], params["readout"]["bias"]
    np.testing.assert_allclose(out, hs_ref[-1] @ k + b, rtol=1e-5, atol=1e-6)
    every = make("gru", "all")
    out_all, carries = every.apply(params, x, return_carries=True)
    assert out_all.shape == (B, T, O)
    np.testing.assert_allclose(out_all, jnp.swapaxes(hs_ref @ k + b, 0, 1), rtol=1e-5, atol=1e-6)
    assert carries.shape == (T, B, H)


def test_lstm_carries_are_c_and_h():
    model = make("lstm")
    params = model.init(jax.random.PRNGKey(0))
    x = inputs_BxTxD()
    hs, (c, h) = model.unroll(params["cell"], x, return_carries=True)
    assert c.shape == h.shape == (T, B, H)
    np.testing.assert_allclose(h, hs)
    assert not np.allclose(c, h)


def test_initial_carry_is_used():
    model = make("tanh_rnn")
    params = model.init(jax.random.PRNGKey(0))
    x = inputs_BxTxD()
    h0 = jnp.full((B, H), 0.5)
    hs, _ = model.unroll(params["cell"], x, carry0=h0)
    carry, h = h0, None
    for t in range(T):
        carry, h = model.cell.apply({"params": params["cell"]}, carry, x[:, t])
    np.testing.assert_allclose(hs[-1], h, rtol=1e-5, atol=1e-6)


def test_param_names_and_shapes():
    shapes = {}
    for cell in sorted(CELLS):
        params = make(cell).init(jax.random.PRNGKey(0))
        shapes[cell] = jax.tree_util.tree_map(lambda a: a.shape, params["cell"])
        assert params["readout"]["kernel"].shape == (H, O)
    assert shapes["tanh_rnn"] == {"W_x": (D, H), "W_s": (H, H), "b": (H,)}
    assert shapes["lstm"] == {"W_x": (D, 4 * H), "W_s": (4 * H, H), "b": (4 * H,)}
    assert shapes["gru"] == {"W_x": (D, 3 * H), "W_s": (3 * H, H), "b": (3 * H,), "b_hn": (H,)}
    params = make("lstm").init(jax.random.PRNGKey(0))
    assert count_params(params) == D * 4 * H + 4 * H * H + 4 * H + H * O + O


def test_vmap_over_seeds_matches_single_models():
    model = make("lstm")
    x = inputs_BxTxD()
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    params = jax.jit(jax.vmap(model.init))(keys)
    out = jax.jit(jax.vmap(model.apply, in_axes=(0, None)))(params, x)
    apply = jax.jit(model.apply)
    for i, k in enumerate(keys):
        single = jax.tree_util.tree_map(lambda a: a[i], params)
        np.testing.assert_allclose(out[i], apply(single, x), rtol=1e-5, atol=1e-6)
    assert not np.allclose(out[0], out[1])


def test_bad_shapes_and_settings():
    model = make("tanh_rnn")
    params = model.init(jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match=r"inputs must have shape \(batch, time, 2\)"):
        model.unroll(params["cell"], jnp.zeros((B, T, D + 1)))
    with pytest.raises(ValueError, match="inputs must have shape"):
        model.unroll(params["cell"], jnp.zeros((T, D)))
    from rnn_spectra.errors import ConfigError

    with pytest.raises(ConfigError, match="readout"):
        SequenceModel(ModelConfig(), D, O, "first")
    with pytest.raises(ConfigError, match="unroll"):
        SequenceModel(dataclasses.replace(ModelConfig(), unroll=-1), D, O, "last")
