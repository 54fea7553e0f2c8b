"""Spectra of the recurrent matrices W_s themselves: singular values, eigenvalues, radius.

Pascanu et al. 2013: ``||ds_{t+1}/ds_t|| <= sigma_max(W_s) * max|phi'|``, so sigma_max(W_s) < 1
is sufficient for vanishing gradients with tanh or ReLU; the spectral radius governs the linear
part's long-run growth.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from rnn_spectra.errors import SpectralInputError

Array = jax.Array


def _check_square(W) -> None:
    if W.ndim != 2 or W.shape[0] != W.shape[1] or W.shape[0] < 1:
        raise SpectralInputError(f"W must be a square (n, n) matrix, got shape {tuple(W.shape)}")


def matrix_spectrum(W) -> dict[str, np.ndarray | float]:
    """Host-side (numpy, float64) spectrum of a square W.

    Returns ``singular_values`` (n,) descending, ``eigenvalues`` (n,) complex by descending
    modulus, ``spectral_radius`` max |eigenvalue|, ``condition_number`` sigma_max / sigma_min (inf
    when singular). Numpy because eigenvalues of non-symmetric matrices are a CPU-only LAPACK call.
    """
    W = np.asarray(W, dtype=np.float64)
    _check_square(W)
    sv = np.linalg.svd(W, compute_uv=False)
    eig = np.linalg.eigvals(W)
    eig = eig[np.argsort(-np.abs(eig), kind="stable")]
    return {
        "singular_values": sv,
        "eigenvalues": eig,
        "spectral_radius": float(np.abs(eig[0])),
        "condition_number": float(sv[0] / sv[-1]) if sv[-1] > 0 else float("inf"),
    }


def spectral_radius(W: Array, squarings: int = 40) -> Array:
    """max |eigenvalue| of W (n, n) by Gelfand's formula ``lim ||W^k||^(1/k)``, k = 2^squarings.

    Pure jnp (jit, vmap, any device — non-symmetric ``eig`` is CPU-only in XLA): W is squared
    repeatedly, renormalised each time, the log-norms accumulated with weight 2^-m. The bias is
    ``ln(cond of eigenvectors) / 2^squarings``, negligible; defective or nilpotent W are fine.
    """
    _check_square(W)

    def body(carry, m):
        A, log_r = carry
        A2 = A @ A
        f = jnp.sqrt(jnp.sum(A2 * A2))
        log_r = log_r + jnp.log(f) / (2.0 ** (m + 1))
        return (A2 / jnp.where(f > 0, f, 1.0), log_r), None

    f0 = jnp.sqrt(jnp.sum(W * W))
    A0 = W / jnp.where(f0 > 0, f0, 1.0)
    (_, log_r), _ = jax.lax.scan(body, (A0, jnp.log(f0)), jnp.arange(squarings, dtype=W.dtype))
    return jnp.exp(log_r)


def singular_values(W: Array) -> Array:
    """Singular values of W, descending (jnp; jit/vmap-able)."""
    _check_square(W)
    return jnp.linalg.svd(W, compute_uv=False)


def lanczos_top_singular_value(J: Array, v0: Array, steps: int) -> Array:
    """sigma_max(J) of J (n, n) from ``steps`` Lanczos steps on ``J^T J`` started at v0 (n,).

    A lower bound (the largest Ritz value of a Krylov subspace), never above the SVD's value, and
    equal to it once ``steps`` reaches n. Each step is two matvecs and a full
    re-orthogonalisation (classical Gram-Schmidt, twice), so it costs O(steps n^2) against the
    SVD's O(n^3) Householder bidiagonalisation: at n = 128, 16 steps take about a tenth of the
    SVD's time. How close it comes depends on the spectrum near the top, not on n; the monitor's
    use is checked against the SVD in tests/test_spectral.py. A zero J (or a v0 in its null
    space) gives 0: the basis stops where the residual falls to rounding level.
    """
    _check_square(J)
    n = J.shape[0]
    if v0.shape != (n,):
        raise SpectralInputError(f"v0 must have shape ({n},) to start on J {tuple(J.shape)}, got {tuple(v0.shape)}")
    m = min(int(steps), n)  # beyond n the Krylov space is all of R^n: more steps add nothing

    def body(j, carry):
        V, alpha, beta, v = carry
        V = V.at[j].set(v)
        w = J.T @ (J @ v)
        alpha = alpha.at[j].set(v @ w)
        scale = jnp.sqrt(jnp.sum(w * w))
        w = w - V.T @ (V @ w)  # against every basis vector so far (rows not yet set are zero)
        w = w - V.T @ (V @ w)  # twice: float32 loses orthogonality in one pass
        b = jnp.sqrt(jnp.sum(w * w))
        # A residual at rounding level means the Krylov space is invariant (exhausted): what is
        # left of w is noise, not orthogonal to V, and would inflate the Ritz values. Stop there.
        live = b > 1e-4 * scale
        beta = beta.at[j].set(jnp.where(live, b, 0.0))
        return V, alpha, beta, jnp.where(live, w / jnp.where(live, b, 1.0), 0.0)

    dtype = J.dtype
    v0 = v0.astype(dtype) / jnp.sqrt(jnp.sum(v0.astype(dtype) ** 2))
    init = (jnp.zeros((m, n), dtype), jnp.zeros((m,), dtype), jnp.zeros((m,), dtype), v0)
    _, alpha, beta, _ = jax.lax.fori_loop(0, m, body, init)
    T = jnp.diag(alpha) + jnp.diag(beta[:-1], 1) + jnp.diag(beta[:-1], -1)  # V^T (J^T J) V
    return jnp.sqrt(jnp.maximum(jnp.linalg.eigvalsh(T)[-1], 0.0))
