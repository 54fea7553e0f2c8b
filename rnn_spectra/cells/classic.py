"""The classic cells: Elman (tanh / ReLU), LSTM and GRU (Flax linen, one step each).

Gated cells keep their gate matrices stacked along the first axis, ``(G*H, H)``, so one matmul
serves all gates; ``recurrent_matrices`` slices them into one (H, H) matrix per gate.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from rnn_spectra.cells.base import PREACTIVATION, Array, Initializer, ZeroCarry
from rnn_spectra.cells.constrained import exp_orthogonal_matmul
from rnn_spectra.cells.inits import orthogonal_init, stacked

# MarginElmanCell's params: W_s = exp(skew(A_U)) diag(1 + margin tanh(p)) exp(skew(A_V))^T.
MARGIN_U, MARGIN_V, MARGIN_P = "A_U", "A_V", "p"


ACTIVATIONS = {"tanh": jnp.tanh, "relu": jax.nn.relu}


class ElmanCell(ZeroCarry, nn.Module):
    """h' = phi(W_s h + W_x x + b). Params: W_x (D, H), W_s (H, H) math orientation, b (H,)."""

    # Tags its pre-activation (checkpoint_name below) but asks for no residual policy: for a
    # one-matmul step the policy's recomputation costs more than the memory it saves (the jitted
    # step of bench_study.py's vmapped pilot group, timed with and without it in one process),
    # while the gated cells' steps gain from it. Same numbers either way.
    tags_preactivation = False
    hidden_size: int
    activation: str = "tanh"
    recurrent_init: Initializer = orthogonal_init(1.0)
    input_init: Initializer = nn.initializers.lecun_normal()
    bias_init: Initializer = nn.initializers.zeros

    @nn.compact
    def __call__(self, carry: Array, x: Array) -> tuple[Array, Array]:
        h = self.hidden_size
        w_x = self.param("W_x", self.input_init, (x.shape[-1], h))
        w_s = self.param("W_s", self.recurrent_init, (h, h))
        b = self.param("b", self.bias_init, (h,))
        z = checkpoint_name(carry @ w_s.T + x @ w_x + b, PREACTIVATION)
        new_h = ACTIVATIONS[self.activation](z)
        return new_h, new_h


class MarginElmanCell(ElmanCell):
    """ElmanCell with ``W_s = U diag(1 + margin tanh p) V^T`` (Vorontsov et al. 2017, "On orthogonality
    and learning RNNs with long term dependencies"), U = exp(skew(A_U)), V = exp(skew(A_V)): every
    singular value of W_s lies in [1 - margin, 1 + margin] whatever the params, margin 0 is an
    orthogonal W_s. Params: W_x (D, H), A_U (H, H) (``recurrent_init``), A_V (H, H) (zeros: V = I),
    p (H,) (``sv_init``), b (H,). ``model.recurrent_param = svd_margin``."""

    margin: float = 0.1
    sv_init: Initializer = nn.initializers.zeros

    @nn.compact
    def __call__(self, carry: Array, x: Array) -> tuple[Array, Array]:
        h = self.hidden_size
        params = {
            "W_x": self.param("W_x", self.input_init, (x.shape[-1], h)),
            MARGIN_U: self.param(MARGIN_U, self.recurrent_init, (h, h)),
            MARGIN_V: self.param(MARGIN_V, nn.initializers.zeros, (h, h)),
            MARGIN_P: self.param(MARGIN_P, self.sv_init, (h,)),
            "b": self.param("b", self.bias_init, (h,)),
        }
        return self.prepared_step(self.prepare_params(params), carry, x)

    # As ExpRNNCell: the model computes W_s once per sequence (two expm), not once per step.
    @nn.nowrap
    def prepare_params(self, params) -> dict[str, Array]:
        """Stored params -> the step's ``W_x``, ``W_s`` (H, H), ``b``."""
        return {"W_x": params["W_x"], "W_s": margin_matrix(params, self.margin), "b": params["b"]}

    @nn.nowrap
    def prepared_step(self, prepared, carry: Array, x: Array) -> tuple[Array, Array]:
        z = checkpoint_name(carry @ prepared["W_s"].T + x @ prepared["W_x"] + prepared["b"], PREACTIVATION)
        new_h = ACTIVATIONS[self.activation](z)
        return new_h, new_h


def margin_matrix(params, margin: float) -> Array:
    """``U diag(1 + margin tanh p) V^T`` from MarginElmanCell's params; stacked params (sweeps)
    give one matrix per member."""

    def one(a_u, a_v, p):
        # matmuls only, no LAPACK: see expm_by_squaring (a sweep of these deadlocked on 2 cores)
        u, v = exp_orthogonal_matmul(a_u), exp_orthogonal_matmul(a_v)
        return (u * (1.0 + margin * jnp.tanh(p))) @ v.T

    fn = one
    for _ in range(params[MARGIN_P].ndim - 1):
        fn = jax.vmap(fn)
    # Full float32 matmuls (in expm too): TF32 on a GPU would move the singular values by ~1e-3,
    # out of the band the parametrisation promises. Once per sequence, so it costs nothing.
    with jax.default_matmul_precision("highest"):
        return fn(params[MARGIN_U], params[MARGIN_V], params[MARGIN_P])


class LSTMCell(nn.Module):
    """Standard LSTM, gates (i, f, g, o) stacked: W_x (D, 4H), W_s (4H, H), b (4H,).

    c' = f*c + i*g, h' = o*tanh(c'). Carry is (c, h). The forget-gate bias starts at
    ``forget_bias`` (1.0 by default, Jozefowicz et al. 2015).
    """

    tags_preactivation = True  # see PREACTIVATION (a plain class attribute, not a field)
    hidden_size: int
    recurrent_init: Initializer = orthogonal_init(1.0)
    input_init: Initializer = nn.initializers.lecun_normal()
    bias_init: Initializer = nn.initializers.zeros
    forget_bias: float = 1.0

    @nn.compact
    def __call__(self, carry, x):
        h = self.hidden_size
        c_prev, h_prev = carry
        w_x = self.param("W_x", self.input_init, (x.shape[-1], 4 * h))
        w_s = self.param("W_s", stacked(self.recurrent_init, 4), (4 * h, h))

        def bias(key, shape, dtype=jnp.float32):
            b = self.bias_init(key, shape, dtype)
            return b.at[h : 2 * h].add(self.forget_bias)

        b = self.param("b", bias, (4 * h,))
        z = checkpoint_name(h_prev @ w_s.T + x @ w_x + b, PREACTIVATION)
        i, f, g, o = jnp.split(z, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c_prev + jax.nn.sigmoid(i) * jnp.tanh(g)
        new_h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (c, new_h), new_h

    def initialize_carry(self, batch_shape):
        zeros = jnp.zeros((*batch_shape, self.hidden_size))
        return (zeros, zeros)


class GRUCell(ZeroCarry, nn.Module):
    """GRU (PyTorch/cuDNN form), gates (r, z, n) stacked: W_x (D, 3H), W_s (3H, H), b (3H,), b_hn (H,).

    r = s(W_ir x + W_hr h + b_r), z = s(W_iz x + W_hz h + b_z),
    n = tanh(W_in x + b_n + r * (W_hn h + b_hn)), h' = (1 - z) * n + z * h.
    """

    tags_preactivation = True  # see PREACTIVATION (a plain class attribute, not a field)
    hidden_size: int
    recurrent_init: Initializer = orthogonal_init(1.0)
    input_init: Initializer = nn.initializers.lecun_normal()
    bias_init: Initializer = nn.initializers.zeros

    @nn.compact
    def __call__(self, carry, x):
        h = self.hidden_size
        w_x = self.param("W_x", self.input_init, (x.shape[-1], 3 * h))
        w_s = self.param("W_s", stacked(self.recurrent_init, 3), (3 * h, h))
        b = self.param("b", self.bias_init, (3 * h,))
        b_hn = self.param("b_hn", self.bias_init, (h,))
        xr, xz, xn = jnp.split(x @ w_x + b, 3, axis=-1)
        # Only the recurrent product is tagged: x @ W_x is cheap to recompute for small inputs.
        hr, hz, hn = jnp.split(checkpoint_name(carry @ w_s.T, PREACTIVATION), 3, axis=-1)
        r = jax.nn.sigmoid(xr + hr)
        z = jax.nn.sigmoid(xz + hz)
        n = jnp.tanh(xn + r * (hn + b_hn))
        new_h = (1.0 - z) * n + z * carry
        return new_h, new_h
