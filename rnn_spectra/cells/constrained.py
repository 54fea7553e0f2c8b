"""Cells that answer the vanishing/exploding question by constraining W_s: IndRNN,
AntisymmetricRNN and the orthogonal expRNN. ``cells.CELLS`` registers them
(``cells/__init__.py``), so they are built, trained, swept and measured like the others.

Each cell is one step ``(carry, x_BxD) -> (carry, h_BxH)``, carry = h (B, H). What
``recurrent_matrices`` returns as ``W_s`` (math orientation) for each:

- ``indrnn``  (Li et al. 2018): h' = relu(W_x x + u * h + b). ``W_s = diag(u)``. The bound
  ``|u_i| <= 2^(1/T)`` is enforced by the optimizer (a projection after every update,
  ``optim.py``), so ``u`` in the params is always the u the cell uses. Default init: the official
  code's u ~ U[2^(-1/T), 2^(1/T)] (``inits.indrnn_init``, T the input length); the study adds
  its input init N(0, 0.001^2) and element-wise gradient clipping at 10 (``study/presets.py``).
- ``antisymmetric`` (Chang et al. 2019): h' = h + eps * tanh(M h + W_x x + b), M = W - W^T - gamma I.
  ``W_s = M``, the matrix inside the tanh. The state Jacobian is ``J = I + eps * D M``, D =
  diag(tanh') in (0, 1]. The eigenvalues of D M have real part in ``[-gamma max D, -gamma min D]``
  (Rayleigh quotient of the similar ``D^(1/2) M D^(1/2)``: v*(W - W^T)v is imaginary), but that
  does *not* bound |eig J|: forward Euler is stable only where ``|1 + eps mu| <= 1`` for every
  eigenvalue mu of D M. At D = I (the zero state with zero bias and input) mu = i w - gamma for the
  eigenvalues i w of W - W^T, and ``|1 + eps(i w - gamma)|^2 = (1 - eps gamma)^2 + eps^2 w^2 <= 1``
  needs ``gamma >= (1 - sqrt(1 - eps^2 w^2)) / eps ~ eps w^2 / 2`` for the largest w (Chang et al.
  add the diffusion gamma for exactly this). eps 0.1, gamma 0.01 (before issue #14) gave
  max |eig J| = 1.028 at init (H = 32) and a positive top Lyapunov exponent. The defaults
  (``config.ModelConfig``: eps 0.1, gamma 0.5) cover w <= 3.12, and the normal init's w is
  ~2.9 (at most 2.97 in 200 draws each at H = 8, 32, 128), so |eig J| <= 1 there: the modes
  with the largest w sit near the unit circle (|eig| ~ 0.993), the slowest decay by eps * gamma
  = 0.05 per step. eps 0.01 with gamma 0.05 keeps every mode within 5e-4 of neutral but moves the
  state 10x slower (digits, 150 steps: validation loss 1.95 against 1.01). Smaller tanh' (D < I)
  only moves the eigenvalues inwards in our checks (``tests/test_constrained_cells.py``).
- ``exprnn`` (Lezcano-Casado & Martinez-Rubio 2019): h' = modrelu(W h + W_x x, b), W = exp(S),
  S = triu(A, 1) - triu(A, 1)^T skew-symmetric, so W is orthogonal for any A. ``W_s = exp(S)``.
  The free parameter ``A`` gets its own learning rate (``optim.orthogonal_lr_factor``).
"""

from __future__ import annotations


import flax.linen as nn
import jax
import jax.numpy as jnp

from jax.ad_checkpoint import checkpoint_name

from rnn_spectra.cells.base import PREACTIVATION, Array, Initializer, ZeroCarry
from rnn_spectra.cells.inits import henaff_init, indrnn_init, orthogonal_init
from rnn_spectra.config import ModelConfig

# Param names the cells' optimizer rules refer to (cells/__init__.py): projected; own lr.
INDRNN_DIAG = "u"
EXPRNN_SKEW = "A"


class IndRNNCell(ZeroCarry, nn.Module):
    """h' = relu(x W_x + u * h + b). Params: W_x (D, H), u (H,) = diag of the recurrent init, b (H,)."""

    hidden_size: int
    recurrent_init: Initializer = indrnn_init(2.0)  # u = 1 without T; make_cell passes T
    input_init: Initializer = nn.initializers.lecun_normal()
    bias_init: Initializer = nn.initializers.zeros

    @nn.compact
    def __call__(self, carry: Array, x: Array) -> tuple[Array, Array]:
        h = self.hidden_size
        w_x = self.param("W_x", self.input_init, (x.shape[-1], h))

        def diag(key, shape, dtype=jnp.float32):
            return jnp.diag(self.recurrent_init(key, (h, h), dtype))

        u = self.param(INDRNN_DIAG, diag, (h,))
        b = self.param("b", self.bias_init, (h,))
        new_h = jax.nn.relu(checkpoint_name(u * carry + x @ w_x + b, PREACTIVATION))
        return new_h, new_h


def antisymmetric_matrix(w: Array, gamma: float) -> Array:
    """M = W - W^T - gamma I (eigenvalues i*omega - gamma)."""
    return w - jnp.swapaxes(w, -1, -2) - gamma * jnp.eye(w.shape[-1], dtype=w.dtype)


class AntisymmetricCell(ZeroCarry, nn.Module):
    """h' = h + epsilon * tanh((W - W^T - gamma I) h + x W_x + b). Params: W_x (D, H), W_s (H, H) = W, b."""

    hidden_size: int
    epsilon: float = ModelConfig.epsilon  # step size of the forward-Euler discretisation
    gamma: float = ModelConfig.gamma  # diffusion: shifts M's eigenvalues to real part -gamma
    recurrent_init: Initializer = orthogonal_init(1.0)
    input_init: Initializer = nn.initializers.lecun_normal()
    bias_init: Initializer = nn.initializers.zeros

    @nn.compact
    def __call__(self, carry: Array, x: Array) -> tuple[Array, Array]:
        h = self.hidden_size
        w_x = self.param("W_x", self.input_init, (x.shape[-1], h))
        w = self.param("W_s", self.recurrent_init, (h, h))
        b = self.param("b", self.bias_init, (h,))
        m = antisymmetric_matrix(w, self.gamma)
        z = checkpoint_name(carry @ m.T + x @ w_x + b, PREACTIVATION)
        new_h = carry + self.epsilon * jnp.tanh(z)
        return new_h, new_h


def skew(a: Array) -> Array:
    """triu(A, 1) - triu(A, 1)^T: the skew-symmetric matrix A parametrises."""
    upper = jnp.triu(a, 1)
    return upper - jnp.swapaxes(upper, -1, -2)


def exp_orthogonal(a: Array) -> Array:
    """W = expm(skew(A)), orthogonal (and in SO(n)) for any A."""
    return jax.scipy.linalg.expm(skew(a))


TAYLOR_DEGREE, MAX_SQUARINGS, THETA = 18, 16, 2.0


def expm_by_squaring(x: Array) -> Array:
    """exp(X) of one square matrix by scaling and squaring a degree-18 Taylor polynomial:
    matmuls only. ``jax.scipy.linalg.expm`` solves its Padé approximant by LAPACK LU and
    triangular solves; in a vmapped sweep on a 2-core CPU, two such batched calls that XLA:CPU
    ran at once deadlocked (each waits in jaxlib's ParallelBatchMap for the pool threads the
    other holds). ||X / 2^s||_1 <= 2, where the truncation error is below 2^19/19! < 1e-11 (a
    larger scaled norm, fewer squarings: each doubles the rounding error); up to 16 squarings
    (||X||_1 <= 131072), computed unconditionally and kept where i < s (static shapes,
    differentiable; the unused squarings stay bounded because exp of a skew-symmetric X, the
    only use here, is orthogonal). Orthogonality in float32: within about 2x of the Padé
    version's."""
    n = x.shape[-1]
    norm = jax.lax.stop_gradient(jnp.max(jnp.sum(jnp.abs(x), axis=-2)))
    s = jnp.clip(jnp.ceil(jnp.log2(jnp.maximum(norm, 1e-30) / THETA)), 0, MAX_SQUARINGS)
    y = x / 2.0 ** s
    eye = jnp.eye(n, dtype=x.dtype)
    p = eye
    for k in range(TAYLOR_DEGREE, 0, -1):  # Horner: I + Y(I + Y/2(I + Y/3(...)))
        p = eye + (y @ p) / k
    for i in range(MAX_SQUARINGS):
        p = jnp.where(i < s, p @ p, p)
    return p


def exp_orthogonal_matmul(a: Array) -> Array:
    """expm(skew(A)) by ``expm_by_squaring``: no LAPACK call in the program (svd_margin)."""
    return expm_by_squaring(skew(a))


def modrelu(z: Array, b: Array) -> Array:
    """sign(z) * relu(|z| + b) (Arjovsky et al. 2016, real case)."""
    return jnp.sign(z) * jax.nn.relu(jnp.abs(z) + b)


class ExpRNNCell(ZeroCarry, nn.Module):
    """h' = modrelu(exp(skew(A)) h + x W_x, b). Params: W_x (D, H), A (H, H), b (H,).

    The modReLU bias starts at the constant bias init plus U[-0.01, 0.01] (expRNN's init; with b = 0
    modReLU is the identity and the cell linear).
    """

    hidden_size: int
    recurrent_init: Initializer = henaff_init(1.0)
    input_init: Initializer = nn.initializers.lecun_normal()
    bias_init: Initializer = nn.initializers.zeros

    @nn.compact
    def __call__(self, carry: Array, x: Array) -> tuple[Array, Array]:
        h = self.hidden_size
        w_x = self.param("W_x", self.input_init, (x.shape[-1], h))
        a = self.param(EXPRNN_SKEW, self.recurrent_init, (h, h))

        def bias(key, shape, dtype=jnp.float32):
            return self.bias_init(key, shape, dtype) + jax.random.uniform(key, shape, dtype, -0.01, 0.01)

        b = self.param("b", bias, (h,))
        return self.prepared_step({"W_x": w_x, "W_s": exp_orthogonal(a), "b": b}, carry, x)

    # The model unrolls ``prepared_step`` with ``prepare_params`` computed once per sequence
    # (SequenceModel.cell_step): XLA does not hoist the expm out of the scan, and inside it the
    # step would cost an expm forward and an expm VJP per time step (~300x slower at T=400).
    @staticmethod
    def prepare_params(params) -> dict[str, Array]:
        """Stored params -> the step's: ``W_s = exp(skew(A))`` (H, H), ``W_x``, ``b`` unchanged."""
        return {"W_x": params["W_x"], "W_s": exp_orthogonal(params[EXPRNN_SKEW]), "b": params["b"]}

    @staticmethod
    def prepared_step(prepared, carry: Array, x: Array) -> tuple[Array, Array]:
        z = checkpoint_name(carry @ prepared["W_s"].T + x @ prepared["W_x"], PREACTIVATION)
        new_h = modrelu(z, prepared["b"])
        return new_h, new_h


# ----------------------------------------------------------------------------- recurrent matrices
def indrnn_matrices(params, **_) -> dict[str, Array]:
    u = params[INDRNN_DIAG]
    return {"W_s": u[..., :, None] * jnp.eye(u.shape[-1], dtype=u.dtype)}


def antisymmetric_matrices(params, *, gamma: float, **_) -> dict[str, Array]:
    return {"W_s": antisymmetric_matrix(params["W_s"], gamma)}


def exprnn_matrices(params, **_) -> dict[str, Array]:
    a = params[EXPRNN_SKEW]
    fn = exp_orthogonal
    for _ in range(a.ndim - 2):  # stacked params (sweeps): one expm per member
        fn = jax.vmap(fn)
    return {"W_s": fn(a)}


def indrnn_bound(seq_len: int) -> float:
    """Li et al. 2018: |u| <= 2^(1/T) keeps the gradient through T steps within a factor 2."""
    return 2.0 ** (1.0 / seq_len)
