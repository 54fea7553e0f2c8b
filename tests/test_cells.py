"""Cells: one step equals a hand-written numpy formula; initializers have the promised spectra;
``recurrent_matrices`` slices W_s into the right gates."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnn_spectra import cells as cells_lib
from rnn_spectra.config import ModelConfig
from rnn_spectra.errors import ConfigError

D, H, B = 3, 5, 4


def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def random_params(cell, seed=0, scale=0.7):
    """Init the cell, then overwrite every parameter with random values (biases included), so a
    formula that drops or swaps a term cannot pass."""
    carry = cell.initialize_carry((B,))
    params = cell.init(jax.random.PRNGKey(seed), carry, jnp.zeros((B, D)))["params"]
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
    leaves = [scale * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)]
    return jax.tree_util.tree_unflatten(tree, leaves)


def random_inputs(seed=2):
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    return (jax.random.normal(k1, (B, D)), jax.random.normal(k2, (B, H)),
            jax.random.normal(k3, (B, H)))


def np_params(params):
    return {k: np.asarray(v, np.float64) for k, v in params.items()}


@pytest.mark.parametrize("name,phi", [("tanh_rnn", np.tanh), ("relu_rnn", lambda v: np.maximum(v, 0.0)),
                                      ("irnn", lambda v: np.maximum(v, 0.0))])
def test_elman_step_matches_numpy(name, phi):
    cell = cells_lib.make_cell(ModelConfig(cell=name, hidden_size=H))
    params = random_params(cell)
    x, h, _ = random_inputs()
    new_carry, out = cell.apply({"params": params}, h, x)
    p = np_params(params)
    x64, h64 = np.asarray(x, np.float64), np.asarray(h, np.float64)
    expected = phi(h64 @ p["W_s"].T + x64 @ p["W_x"] + p["b"])  # W_s in math orientation
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(new_carry, expected, rtol=1e-5, atol=1e-5)
    # Math orientation: W_s (not its transpose) maps a hidden unit j to pre-activation i.
    assert set(params) == {"W_x", "W_s", "b"} and params["W_s"].shape == (H, H)


def test_lstm_step_matches_numpy():
    cell = cells_lib.make_cell(ModelConfig(cell="lstm", hidden_size=H))
    params = random_params(cell)
    x, h, c = random_inputs()
    (new_c, new_h), out = cell.apply({"params": params}, (c, h), x)
    p = np_params(params)
    x64, h64, c64 = (np.asarray(a, np.float64) for a in (x, h, c))
    w_i, w_f, w_g, w_o = np.split(p["W_s"], 4, axis=0)
    u_i, u_f, u_g, u_o = np.split(p["W_x"], 4, axis=1)
    b_i, b_f, b_g, b_o = np.split(p["b"], 4)
    i = _sigmoid(x64 @ u_i + h64 @ w_i.T + b_i)
    f = _sigmoid(x64 @ u_f + h64 @ w_f.T + b_f)
    g = np.tanh(x64 @ u_g + h64 @ w_g.T + b_g)
    o = _sigmoid(x64 @ u_o + h64 @ w_o.T + b_o)
    c_exp = f * c64 + i * g
    h_exp = o * np.tanh(c_exp)
    np.testing.assert_allclose(new_c, c_exp, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(new_h, h_exp, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out, h_exp, rtol=1e-5, atol=1e-5)


def test_gru_step_matches_numpy_pytorch_form():
    cell = cells_lib.make_cell(ModelConfig(cell="gru", hidden_size=H))
    params = random_params(cell)
    x, h, _ = random_inputs()
    new_h, out = cell.apply({"params": params}, h, x)
    p = np_params(params)
    x64, h64 = np.asarray(x, np.float64), np.asarray(h, np.float64)
    w_r, w_z, w_n = np.split(p["W_s"], 3, axis=0)
    u_r, u_z, u_n = np.split(p["W_x"], 3, axis=1)
    b_r, b_z, b_n = np.split(p["b"], 3)
    r = _sigmoid(x64 @ u_r + b_r + h64 @ w_r.T)
    z = _sigmoid(x64 @ u_z + b_z + h64 @ w_z.T)
    n = np.tanh(x64 @ u_n + b_n + r * (h64 @ w_n.T + p["b_hn"]))  # reset applied after W_hn h
    h_exp = (1.0 - z) * n + z * h64
    np.testing.assert_allclose(new_h, h_exp, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out, h_exp, rtol=1e-5, atol=1e-5)


def test_lstm_and_gru_match_torch_cells_when_available():
    """Same weights in PyTorch's layout give the same step (gate orders i,f,g,o and r,z,n)."""
    torch = pytest.importorskip("torch")
    x, h, c = random_inputs()
    tx, th, tc = (torch.tensor(np.asarray(a)) for a in (x, h, c))
    lstm = cells_lib.make_cell(ModelConfig(cell="lstm", hidden_size=H))
    p = random_params(lstm)
    ref = torch.nn.LSTMCell(D, H)
    with torch.no_grad():
        ref.weight_ih.copy_(torch.tensor(np.asarray(p["W_x"]).T))
        ref.weight_hh.copy_(torch.tensor(np.asarray(p["W_s"])))
        ref.bias_ih.copy_(torch.tensor(np.asarray(p["b"])))
        ref.bias_hh.zero_()
        h_ref, c_ref = ref(tx, (th, tc))
    (new_c, new_h), _ = lstm.apply({"params": p}, (c, h), x)
    np.testing.assert_allclose(new_h, h_ref.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(new_c, c_ref.numpy(), rtol=1e-5, atol=1e-5)

    gru = cells_lib.make_cell(ModelConfig(cell="gru", hidden_size=H))
    p = random_params(gru)
    ref = torch.nn.GRUCell(D, H)
    with torch.no_grad():
        ref.weight_ih.copy_(torch.tensor(np.asarray(p["W_x"]).T))
        ref.weight_hh.copy_(torch.tensor(np.asarray(p["W_s"])))
        ref.bias_ih.copy_(torch.tensor(np.asarray(p["b"])))
        ref.bias_hh.copy_(torch.tensor(np.concatenate([np.zeros(2 * H), np.asarray(p["b_hn"])])))
        h_ref = ref(tx, th)
    new_h, _ = gru.apply({"params": p}, h, x)
    np.testing.assert_allclose(new_h, h_ref.numpy(), rtol=1e-5, atol=1e-5)


def test_lstm_forget_bias_init():
    cell = cells_lib.make_cell(ModelConfig(cell="lstm", hidden_size=H, bias_init=0.25, forget_bias=1.5))
    params = cell.init(jax.random.PRNGKey(0), cell.initialize_carry((1,)), jnp.zeros((1, D)))["params"]
    b = np.asarray(params["b"])
    np.testing.assert_allclose(b[H:2 * H], 1.75)  # forget gate: bias_init + forget_bias
    np.testing.assert_allclose(np.delete(b, np.s_[H:2 * H]), 0.25)
    default = cells_lib.make_cell(ModelConfig(cell="lstm", hidden_size=H))
    b = np.asarray(default.init(jax.random.PRNGKey(0), default.initialize_carry((1,)),
                                jnp.zeros((1, D)))["params"]["b"])
    np.testing.assert_allclose(b[H:2 * H], 1.0)
    np.testing.assert_allclose(np.delete(b, np.s_[H:2 * H]), 0.0)


# ----------------------------------------------------------------------------- initializers
N = 64


def _recurrent(name, **kw):
    cell = cells_lib.make_cell(ModelConfig(cell=name, hidden_size=N, **kw))
    params = cell.init(jax.random.PRNGKey(3), cell.initialize_carry((1,)), jnp.zeros((1, 2)))["params"]
    return {k: np.asarray(v, np.float64) for k, v in cells_lib.recurrent_matrices(name, params).items()}


@pytest.mark.parametrize("cell", ["tanh_rnn", "lstm", "gru"])
@pytest.mark.parametrize("gain", [0.5, 1.0, 1.7])
def test_orthogonal_init_all_singular_values_equal_gain(cell, gain):
    mats = _recurrent(cell, recurrent_init="orthogonal", init_scale=gain)
    for name, w in mats.items():
        assert w.shape == (N, N)
        np.testing.assert_allclose(np.linalg.svd(w, compute_uv=False), gain, rtol=1e-4, err_msg=name)
    if len(mats) > 1:  # one independent draw per gate
        blocks = list(mats.values())
        assert not np.allclose(blocks[0], blocks[1])


@pytest.mark.parametrize("cell", ["irnn", "relu_rnn", "lstm"])
def test_identity_init(cell):
    for name, w in _recurrent(cell, recurrent_init="identity", init_scale=0.3).items():
        np.testing.assert_allclose(w, 0.3 * np.eye(N), rtol=1e-6, atol=0, err_msg=name)
    # irnn's default is the identity with scale 1 (Le et al. 2015).
    if cell == "irnn":
        np.testing.assert_array_equal(_recurrent("irnn")["W_s"], np.eye(N))


def test_normal_init_scale():
    n = 256
    cell = cells_lib.make_cell(ModelConfig(cell="relu_rnn", hidden_size=n, recurrent_init="normal",
                                           init_scale=1.5))
    w = np.asarray(cell.init(jax.random.PRNGKey(0), cell.initialize_carry((1,)),
                             jnp.zeros((1, 2)))["params"]["W_s"], np.float64)
    # Entries N(0, scale^2 / n): std within sampling error (n^2 = 65536 samples -> ~0.3%).
    assert abs(w.std() - 1.5 / np.sqrt(n)) < 0.02 * 1.5 / np.sqrt(n)
    assert abs(w.mean()) < 4 * 1.5 / n
    # Circular law: spectral radius close to the scale.
    radius = np.max(np.abs(np.linalg.eigvals(w)))
    assert 1.5 * 0.9 < radius < 1.5 * 1.1


@pytest.mark.parametrize("scale", [1.0, 0.8])
def test_np_rnn_init_symmetric_top_eigenvalue(scale):
    w = _recurrent("relu_rnn", recurrent_init="np_rnn", init_scale=scale)["W_s"]
    np.testing.assert_allclose(w, w.T, atol=1e-6)
    eig = np.linalg.eigvalsh((w + w.T) / 2)
    np.testing.assert_allclose(eig[-1], scale, rtol=1e-4)
    assert eig[0] > 0  # (A + I) with A = R^T R / n is positive definite
    # Not just scale * I: A contributes a spread of eigenvalues.
    assert eig[-1] - eig[0] > 0.3 * scale


def test_cell_default_inits():
    assert np.allclose(_recurrent("irnn")["W_s"], np.eye(N))
    np.testing.assert_allclose(np.linalg.svd(_recurrent("tanh_rnn")["W_s"], compute_uv=False), 1.0, rtol=1e-4)


# ----------------------------------------------------------------------------- recurrent_matrices
@pytest.mark.parametrize("name,gates", [("tanh_rnn", ["W_s"]), ("relu_rnn", ["W_s"]), ("irnn", ["W_s"]),
                                        ("lstm", ["W_i", "W_f", "W_g", "W_o"]),
                                        ("gru", ["W_r", "W_z", "W_n"])])
def test_recurrent_matrices_one_per_gate_in_order(name, gates):
    g = len(gates)
    w_s = np.arange(g * H * H, dtype=np.float32).reshape(g * H, H)  # block k holds k*H*H ...
    params = {"W_s": jnp.asarray(w_s)}
    mats = cells_lib.recurrent_matrices(name, params)
    assert list(mats) == gates
    for k, gate in enumerate(gates):
        assert mats[gate].shape == (H, H)
        np.testing.assert_array_equal(mats[gate], w_s[k * H:(k + 1) * H])
    # Stacked params (a vmapped sweep) slice the same way, keeping the leading axis.
    stacked = cells_lib.recurrent_matrices(name, {"W_s": jnp.stack([w_s, -w_s])})
    assert stacked[gates[-1]].shape == (2, H, H)
    np.testing.assert_array_equal(stacked[gates[-1]][1], -w_s[(g - 1) * H:])


def test_recurrent_matrices_name_the_gates_the_cell_uses():
    """Zeroing the block named W_f must remove h from the forget gate only (semantics, not slicing)."""
    cell = cells_lib.make_cell(ModelConfig(cell="lstm", hidden_size=H))
    params = random_params(cell)
    x, h, c = random_inputs()
    w_s = np.array(params["W_s"])
    w_s[H:2 * H] = 0.0  # the W_f block by layout
    p0 = {**params, "W_s": jnp.asarray(w_s)}
    assert np.all(np.asarray(cells_lib.recurrent_matrices("lstm", p0)["W_f"]) == 0)
    # With W_f = 0 and c = 0 the step no longer depends on h through f: perturbing h changes only
    # via i, g, o; check against the numpy formula with the forget term's h removed.
    (c1, _), _ = cell.apply({"params": p0}, (c, h), x)
    p = np_params(p0)
    f = _sigmoid(np.asarray(x, np.float64) @ np.split(p["W_x"], 4, axis=1)[1] + np.split(p["b"], 4)[1])
    i = _sigmoid(np.asarray(x, np.float64) @ np.split(p["W_x"], 4, axis=1)[0]
                 + np.asarray(h, np.float64) @ np.split(p["W_s"], 4)[0].T + np.split(p["b"], 4)[0])
    g = np.tanh(np.asarray(x, np.float64) @ np.split(p["W_x"], 4, axis=1)[2]
                + np.asarray(h, np.float64) @ np.split(p["W_s"], 4)[2].T + np.split(p["b"], 4)[2])
    np.testing.assert_allclose(c1, f * np.asarray(c, np.float64) + i * g, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- bad names
def test_unknown_names_list_valid_ones():
    with pytest.raises(ConfigError) as e:
        cells_lib.make_cell(ModelConfig(cell="lstmm", hidden_size=4))
    assert "unknown cell 'lstmm'" in str(e.value) and "Did you mean 'lstm'" in str(e.value)
    assert f"valid: {', '.join(sorted(cells_lib.CELLS))}." in str(e.value)
    assert {"tanh_rnn", "relu_rnn", "irnn", "lstm", "gru"} <= set(cells_lib.CELLS)
    with pytest.raises(ConfigError) as e:
        cells_lib.make_cell(ModelConfig(cell="tanh_rnn", hidden_size=4, recurrent_init="orthogonl"))
    assert "unknown recurrent init 'orthogonl'" in str(e.value)
    assert f"valid: {', '.join(sorted(cells_lib.RECURRENT_INITS))}." in str(e.value)
    assert {"orthogonal", "identity", "normal", "np_rnn"} <= set(cells_lib.RECURRENT_INITS)
    with pytest.raises(ConfigError, match="hidden_size must be a positive"):
        cells_lib.make_cell(ModelConfig(cell="tanh_rnn", hidden_size=0))
