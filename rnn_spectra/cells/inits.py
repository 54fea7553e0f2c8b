"""Recurrent initializers: ``RECURRENT_INITS[name](scale) -> init(key, shape, dtype)``, and the
input-kernel initializers ``INPUT_INITS``. Each takes its gain and returns a Flax initializer;
those in ``SEQ_LEN_INITS`` (IndRNN's) also take the input length T: ``(scale, seq_len)``.
"""

from __future__ import annotations

import math
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from rnn_spectra.cells.base import Array, Initializer
from rnn_spectra.errors import ConfigError, unknown_name


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





INPUT_INITS: dict[str, Callable[[float], Initializer]] = {
    # fan-in scaled: N(0, scale^2 / fan_in) for a (fan_in, fan_out) kernel.
    "normal": lambda s: nn.initializers.variance_scaling(s * s, "fan_in", "normal"),
    "lecun_uniform": lambda s: nn.initializers.variance_scaling(s * s, "fan_in", "uniform"),
    "glorot_uniform": lambda s: nn.initializers.variance_scaling(s * s, "fan_avg", "uniform"),
    # N(0, scale^2) whatever the fan-in: IndRNN's official input init, N(0, 0.001^2)
    # (Sunnydreamrain/IndRNN_Theano_Lasagne, adding/adding.py: W_in_to_hid=Normal(in2hidW=0.001)).
    "normal_std": lambda s: nn.initializers.normal(stddev=s),
}


def get_input_init(name: str, scale: float) -> Initializer:
    if name not in INPUT_INITS:
        raise unknown_name("input init", name, INPUT_INITS)
    return INPUT_INITS[name](scale)


def stacked(init: Initializer, gates: int) -> Initializer:
    """One independent (H, H) draw per gate, stacked to (gates*H, H)."""

    def init_stacked(key, shape, dtype=jnp.float32):
        hidden = shape[1]
        keys = jax.random.split(key, gates)
        return jnp.concatenate([init(k, (hidden, hidden), dtype) for k in keys], axis=0)

    return init_stacked


def uniform_init(scale: float) -> Initializer:
    """Entries i.i.d. U[0, scale] (IndRNN's lower layers in the official code; it uses the diagonal)."""

    def init(key, shape, dtype=jnp.float32):
        return scale * jax.random.uniform(key, shape, dtype)

    return init


def indrnn_init(scale: float, seq_len: int | None = None) -> Initializer:
    """IndRNN's recurrent weights as the official code initialises the layer that is read out:
    u ~ U[MAG^(-1/T), MAG^(1/T)], MAG = ``scale`` (2 there), T the input length, so that
    u^T lies in [1/MAG, MAG]. Source: Sunnydreamrain/IndRNN_Theano_Lasagne, adding/adding.py
    (``U_bound = pow(MAG, 1/seq_len)``, ``U_lowbound = pow(1/MAG, 1/seq_len)``, last layer
    ``Uniform(range=(U_lowbound, U_bound))``; lower layers ``(0, U_bound)``) and its README ("the
    recurrent weights for the last IndRNN layer can be initialized to be all 1 or a proper range
    (1-epsilon, 1+epsilon)"); the PyTorch code (IndRNN_pytorch, pixelMNIST/Indrnn_mnist_network.py)
    inits its last layer the same way (with MAG 5 there). Our models have one layer, the one read
    out. ``seq_len`` None (a model built without a task):
    the T -> infinity limit, u = 1. U[0, 1] instead leaves u^T ~ 1e-19 at T = 64 for the median
    unit: nothing is carried."""
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale >= 1):
        raise ConfigError(f"the indrnn init needs model.init_scale = MAG >= 1 (u in [MAG^(-1/T), "
                          f"MAG^(1/T)], 2 in the official code), got {scale!r}")

    def init(key, shape, dtype=jnp.float32):
        if seq_len is None:
            return jnp.ones(shape, dtype)
        lo, hi = scale ** (-1.0 / seq_len), scale ** (1.0 / seq_len)
        return jax.random.uniform(key, shape, dtype, lo, hi)

    return init


def _block_skew(angles: Array, n: int, dtype) -> Array:
    """Block-diagonal skew-symmetric (n, n) with 2x2 blocks [[0, a], [-a, 0]] (odd n: last row 0)."""
    s = jnp.zeros((n, n), dtype)
    idx = jnp.arange(n // 2)
    s = s.at[2 * idx, 2 * idx + 1].set(angles.astype(dtype))
    return s.at[2 * idx + 1, 2 * idx].set(-angles.astype(dtype))


def henaff_init(scale: float) -> Initializer:
    """Henaff et al. 2016 as used by expRNN: block rotations, angles U[-pi, pi] (times scale)."""

    def init(key, shape, dtype=jnp.float32):
        a = jax.random.uniform(key, (shape[0] // 2,), jnp.float32, -math.pi, math.pi)
        return _block_skew(scale * a, shape[0], dtype)

    return init


def cayley_init(scale: float) -> Initializer:
    """Helfrich et al. 2018 as used by expRNN: a = -sqrt((1 - cos t) / (1 + cos t)), t ~ U[0, pi/2]."""

    def init(key, shape, dtype=jnp.float32):
        t = jax.random.uniform(key, (shape[0] // 2,), jnp.float32, 0.0, math.pi / 2)
        a = -jnp.sqrt((1.0 - jnp.cos(t)) / (1.0 + jnp.cos(t)))
        return _block_skew(scale * a, shape[0], dtype)

    return init


RECURRENT_INITS: dict[str, Callable[[float], Initializer]] = {
    "orthogonal": orthogonal_init,
    "identity": identity_init,
    "normal": normal_init,
    "np_rnn": np_rnn_init,
    "uniform": uniform_init,  # IndRNN (lower layers)
    "indrnn": indrnn_init,  # IndRNN, the layer read out (T-dependent: SEQ_LEN_INITS)
    "henaff": henaff_init,  # expRNN
    "cayley": cayley_init,  # expRNN
}


SEQ_LEN_INITS = frozenset({"indrnn"})  # these take (scale, seq_len)


def get_recurrent_init(name: str, scale: float, seq_len: int | None = None) -> Initializer:
    if name not in RECURRENT_INITS:
        raise unknown_name("recurrent init", name, RECURRENT_INITS)
    if name in SEQ_LEN_INITS:
        return RECURRENT_INITS[name](scale, seq_len)
    return RECURRENT_INITS[name](scale)
