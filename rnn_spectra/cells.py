"""Recurrent cells (Flax linen), their recurrent initializers, and the registry CELLS.

Every cell is one step: ``cell.apply({"params": p}, carry, x_BxD) -> (carry, h_BxH)``; sequences
are unrolled by ``jax.lax.scan`` in ``model.py``. Recurrent matrices are stored in *math
orientation* (``W_s`` maps h to the pre-activation: ``h' = phi(W_s h + W_x x + b)``), so the
per-step Jacobian of an Elman cell is ``diag(phi') @ W_s`` and ``recurrent_matrices`` returns
exactly the matrices whose spectra the theory talks about. Gated cells keep their gate matrices
stacked along the first axis, ``(G*H, H)``, so one matmul serves all gates; ``recurrent_matrices``
slices them into one (H, H) matrix per gate.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from rnn_spectra.errors import ConfigError, unknown_name

Array = jax.Array
Initializer = Callable[..., Array]

# Each cell tags the output of its recurrent matmul(s) with this name. Outside ``jax.checkpoint``
# the tag does nothing; ``model.SequenceModel`` checkpoints its scan step with a policy that saves
# only these arrays, so the backward pass keeps one (B, G*H) array per step instead of every gate
# activation and recomputes the cheap element-wise part (fewer, smaller stores: faster on CPU).
PREACTIVATION = "rnn_preactivation"


# ----------------------------------------------------------------------------- initializers
def orthogonal_init(scale: float) -> Initializer:
    """Random orthogonal matrix times ``scale`` (every singular value equals the gain)."""
    return nn.initializers.orthogonal(scale=scale)


def identity_init(scale: float) -> Initializer:
    """``scale * I`` (IRNN, Le et al. 2015)."""

    def init(key, shape, dtype=jnp.float32):
        del key
        return scale * jnp.eye(shape[0], shape[1], dtype=dtype)

    return init


def normal_init(scale: float) -> Initializer:
    """Entries i.i.d. N(0, scale^2 / n): spectral radius ~ scale for large n (circular law)."""

    def init(key, shape, dtype=jnp.float32):
        return scale * jax.random.normal(key, shape, dtype) / jnp.sqrt(shape[-1]).astype(dtype)

    return init


def np_rnn_init(scale: float) -> Initializer:
    """Talathi & Vartak 2015: ``scale * (A + I) / lambda_max(A + I)``, ``A = R^T R / n``, R ~ N(0,1).

    Symmetric positive definite with top eigenvalue ``scale`` (1 by default).
    """

    def init(key, shape, dtype=jnp.float32):
        n = shape[-1]
        r = jax.random.normal(key, (n, n), jnp.float32)
        m = r.T @ r / n + jnp.eye(n)
        top = jnp.linalg.eigvalsh(m)[-1]
        return (scale * m / top).astype(dtype)

    return init


RECURRENT_INITS: dict[str, Callable[[float], Initializer]] = {
    "orthogonal": orthogonal_init,
    "identity": identity_init,
    "normal": normal_init,
    "np_rnn": np_rnn_init,
}


def get_recurrent_init(name: str, scale: float) -> Initializer:
    if name not in RECURRENT_INITS:
        raise unknown_name("recurrent init", name, RECURRENT_INITS)
    return RECURRENT_INITS[name](scale)


INPUT_INITS: dict[str, Callable[[float], Initializer]] = {
    # fan-in scaled: N(0, scale^2 / fan_in) for a (fan_in, fan_out) kernel.
    "normal": lambda s: nn.initializers.variance_scaling(s * s, "fan_in", "normal"),
    "lecun_uniform": lambda s: nn.initializers.variance_scaling(s * s, "fan_in", "uniform"),
    "glorot_uniform": lambda s: nn.initializers.variance_scaling(s * s, "fan_avg", "uniform"),
}


def get_input_init(name: str, scale: float) -> Initializer:
    if name not in INPUT_INITS:
        raise unknown_name("input init", name, INPUT_INITS)
    return INPUT_INITS[name](scale)


def _stacked(init: Initializer, gates: int) -> Initializer:
    """One independent (H, H) draw per gate, stacked to (gates*H, H)."""

    def stacked(key, shape, dtype=jnp.float32):
        hidden = shape[1]
        keys = jax.random.split(key, gates)
        return jnp.concatenate([init(k, (hidden, hidden), dtype) for k in keys], axis=0)

    return stacked


# ----------------------------------------------------------------------------- cells
ACTIVATIONS = {"tanh": jnp.tanh, "relu": jax.nn.relu}


class ElmanCell(nn.Module):
    """h' = phi(W_s h + W_x x + b). Params: W_x (D, H), W_s (H, H) math orientation, b (H,)."""

    tags_preactivation = True  # see PREACTIVATION (a plain class attribute, not a field)
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

    def initialize_carry(self, batch_shape: tuple[int, ...]) -> Array:
        return jnp.zeros((*batch_shape, self.hidden_size))


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
        w_s = self.param("W_s", _stacked(self.recurrent_init, 4), (4 * h, h))

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


class GRUCell(nn.Module):
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
        w_s = self.param("W_s", _stacked(self.recurrent_init, 3), (3 * h, h))
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

    def initialize_carry(self, batch_shape):
        return jnp.zeros((*batch_shape, self.hidden_size))


# ----------------------------------------------------------------------------- registry
@dataclasses.dataclass(frozen=True)
class CellSpec:
    """How to build one registered cell; defaults apply when the config leaves them unset."""

    module: type[nn.Module]
    gates: tuple[str, ...]  # names of the (H, H) recurrent blocks, in stacking order
    default_recurrent_init: str
    default_init_scale: float
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)


CELLS: dict[str, CellSpec] = {
    "tanh_rnn": CellSpec(ElmanCell, ("W_s",), "orthogonal", 1.0, {"activation": "tanh"}),
    "relu_rnn": CellSpec(ElmanCell, ("W_s",), "normal", 1.0, {"activation": "relu"}),
    "irnn": CellSpec(ElmanCell, ("W_s",), "identity", 1.0, {"activation": "relu"}),
    "lstm": CellSpec(LSTMCell, ("W_i", "W_f", "W_g", "W_o"), "orthogonal", 1.0),
    "gru": CellSpec(GRUCell, ("W_r", "W_z", "W_n"), "orthogonal", 1.0),
}


def get_cell_spec(name: str) -> CellSpec:
    if name not in CELLS:
        raise unknown_name("cell", name, CELLS)
    return CELLS[name]


def make_cell(
    name: str,
    hidden_size: int,
    *,
    recurrent_init: str | None = None,
    init_scale: float | None = None,
    input_init: str = "normal",
    input_scale: float = 1.0,
    bias_init: float = 0.0,
    forget_bias: float = 1.0,
) -> nn.Module:
    """Build a registered cell. ``recurrent_init``/``init_scale`` default to the cell's own."""
    spec = get_cell_spec(name)
    if hidden_size <= 0:
        raise ConfigError(f"model.hidden_size must be a positive integer, got {hidden_size}")
    rec = get_recurrent_init(
        recurrent_init or spec.default_recurrent_init,
        spec.default_init_scale if init_scale is None else init_scale,
    )
    kwargs = dict(spec.kwargs)
    if spec.module is LSTMCell:
        kwargs["forget_bias"] = forget_bias
    return spec.module(
        hidden_size=hidden_size,
        recurrent_init=rec,
        input_init=get_input_init(input_init, input_scale),
        bias_init=nn.initializers.constant(bias_init),
        **kwargs,
    )


def recurrent_matrices(cell_name: str, cell_params) -> dict[str, Array]:
    """The cell's recurrent (H, H) matrices by name: {"W_s"} or one per gate (math orientation)."""
    spec = get_cell_spec(cell_name)
    if getattr(spec, "matrices", None) is not None:  # W_s derived from the params (constrained_cells)
        return spec.matrices(cell_params, **spec.kwargs)
    gates = spec.gates
    w_s = cell_params["W_s"]
    hidden = w_s.shape[-1]
    return {g: w_s[..., i * hidden : (i + 1) * hidden, :] for i, g in enumerate(gates)}


# IndRNN, AntisymmetricRNN and expRNN live in their own module; importing it registers them in
# CELLS and their initializers in RECURRENT_INITS (last, because it imports from this module).
from rnn_spectra import constrained_cells as _constrained_cells  # noqa: E402,F401
