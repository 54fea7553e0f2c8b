"""All singular values of long Jacobian products, in natural logs, without over/underflow.

``P[t] = J[T-1] @ ... @ J[t]`` spans hundreds of orders of magnitude (a ReLU RNN with
W_s = 1.5 I reaches e^2027 at T = 5000), so it is never formed. Instead the transpose
``X_t = P[t]^T = J[t]^T X_{t+1}`` is carried in the graded form ``X = U diag(e^l) Z`` (U orthogonal,
l log scales, Z unit upper-triangular-bounded), the "UDT" stabilisation of long matrix products
used in quantum Monte Carlo: each step is one column-pivoted QR of ``J^T U`` whose pivots are chosen
by the *weighted* column norms ``||(J^T U)_j|| e^{l_j}`` computed in log space, which keeps every
entry of the new triangular factor <= 1 and sends dead (ReLU) directions to the end instead of
letting them poison Z. The singular values of ``X`` are those of ``diag(e^l) Z``; a one-sided
Jacobi SVD written in the same log-scaled form finishes them to high relative accuracy (graded
matrices times well-conditioned ones: Demmel & Veselic 1992), for every t at once.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from rnn_spectra.dynamics import kahan_add
from rnn_spectra.spectral.jacobians import _lag_slots, check_jacobians, check_lags

Array = jax.Array

# Stands for ln 0 (an exactly singular direction). Finite so that differences of two "zeros" stay
# 0 instead of nan; large enough that adding any real log value leaves it unchanged in float32.
LOG_ZERO = -1e30


def _safe_log(x: Array) -> Array:
    return jnp.maximum(jnp.log(jnp.where(x > 0, x, 1.0)) + jnp.where(x > 0, 0.0, LOG_ZERO), LOG_ZERO)


def weighted_pivoted_qr(A: Array, log_w: Array) -> tuple[Array, Array, Array]:
    """Householder QR of ``A diag(e^log_w)`` with column pivoting, never forming the weighted matrix.

    Returns ``Q`` (n, n) orthogonal, ``R`` (n, m) upper triangular *of the unweighted* ``A[:, perm]``,
    and ``perm`` (m,), with ``A[:, perm] = Q R``; the pivot at step k maximises the weighted residual
    column norm, so ``|R_kj| e^{log_w[perm_j]} <= |R_kk| e^{log_w[perm_k]}`` for j > k.
    """
    n, m = A.shape
    rows, cols = jnp.arange(n), jnp.arange(m)
    floor = jnp.finfo(A.dtype).min

    def body(k, carry):
        A, Qt, perm = carry
        below = rows >= k
        res = jnp.where(below[:, None], A, 0.0)
        key = 0.5 * _safe_log(jnp.sum(res * res, axis=0)) + log_w[perm]
        key = jnp.where(cols >= k, jnp.maximum(key, floor), -jnp.inf)
        j = jnp.argmax(key)
        a_k, a_j = A[:, k], A[:, j]
        A = A.at[:, k].set(a_j).at[:, j].set(a_k)
        p_k, p_j = perm[k], perm[j]
        perm = perm.at[k].set(p_j).at[j].set(p_k)
        x = jnp.where(below, A[:, k], 0.0)
        norm = jnp.sqrt(jnp.sum(x * x))
        alpha = -jnp.where(x[k] < 0, -1.0, 1.0) * norm
        v = x.at[k].add(-alpha)
        vv = jnp.sum(v * v)
        beta = jnp.where(vv > 0, 2.0 / jnp.where(vv > 0, vv, 1.0), 0.0)
        A = A - beta * jnp.outer(v, v @ A)
        Qt = Qt - beta * jnp.outer(v, v @ Qt)
        return A, Qt, perm

    init = (A, jnp.eye(n, dtype=A.dtype), cols)
    R, Qt, perm = jax.lax.fori_loop(0, min(n, m), body, init)
    return Qt.T, jnp.triu(R), perm


def _graded_step(U: Array, log_s: Array, comp: Array, Z: Array, A: Array):
    """``A @ (U diag(e^log_s) Z)`` in the same form: returns (U', log_s', comp', Z').

    ``comp`` is the Kahan compensation of the running sums in ``log_s``: thousands of float32
    additions of ~0.4 to ~2000 would otherwise lose ~1e-4 each.
    """
    M = A @ U
    Q, R, perm = weighted_pivoted_qr(M, log_s)
    ls, comp = log_s[perm], comp[perm]
    d = jnp.diagonal(R)
    sign = jnp.where(d < 0, -1.0, 1.0).astype(R.dtype)
    Q, R = Q * sign[None, :], R * sign[:, None]
    log_d = _safe_log(jnp.abs(d))
    # Z_r = diag(|d| e^ls)^-1 R diag(e^ls): entries (R_ij / R_ii) e^{ls_j - ls_i}, <= 1 by the
    # weighted pivoting (the clip only removes rounding); rows with R_ii = 0 are exactly zero rows
    # of the residual, so they become unit rows.
    log_ratio = _safe_log(jnp.abs(R)) - log_d[:, None] + ls[None, :] - ls[:, None]
    Zr = jnp.sign(R) * jnp.exp(jnp.minimum(log_ratio, 0.0))
    live = (jnp.abs(d) > 0)[:, None]
    eye = jnp.eye(R.shape[0], dtype=R.dtype)
    Zr = jnp.where(live, jnp.triu(Zr), eye)
    Zr = jnp.where(eye > 0, 1.0, Zr)
    Z = Zr @ Z[perm]
    # Keep Z's rows at unit norm (the scale moves into log_s) so nothing drifts over long T.
    row = jnp.sqrt(jnp.sum(Z * Z, axis=1))
    Z = Z / jnp.where(row > 0, row, 1.0)[:, None]
    total, comp = kahan_add(ls, comp, log_d + _safe_log(row))
    comp = jnp.where(total > LOG_ZERO, comp, 0.0)
    return Q, jnp.maximum(total, LOG_ZERO), comp, Z


@functools.lru_cache(maxsize=None)
def _round_robin(m: int) -> np.ndarray:
    """(m-1, m/2, 2) index pairs: every pair of m (even) rows meets exactly once per sweep."""
    players = list(range(m))
    rounds = []
    for _ in range(m - 1):
        rounds.append([(players[i], players[m - 1 - i]) for i in range(m // 2)])
        players = [players[0], players[-1], *players[1:-1]]
    return np.asarray(rounds, np.int32)


def graded_log_singular_values(log_s: Array, Z: Array, max_sweeps: int = 30) -> Array:
    """Natural-log singular values (descending) of ``diag(e^log_s) @ Z``; Z (n, n), log_s (n,).

    One-sided Jacobi on the rows, each row kept as ``e^l z`` with ``||z|| = 1``: a rotation of a
    big row b and a small row s (ratio rho = e^{l_s - l_b} <= 1) is written in rho so that no
    e^l is ever formed. Exact zero singular values come back as -inf.
    """
    n = Z.shape[0]
    if n == 1:
        return jnp.where(log_s <= LOG_ZERO, -jnp.inf, log_s + _safe_log(jnp.abs(Z[:, 0])))
    m = n + (n % 2)
    if m != n:  # pad with an exact zero row so every row has a partner each round
        log_s = jnp.concatenate([log_s, jnp.full((1,), LOG_ZERO, log_s.dtype)])
        Z = jnp.pad(Z, ((0, 1), (0, 0)))
    norms = jnp.sqrt(jnp.sum(Z * Z, axis=1))
    log_s = jnp.maximum(log_s + _safe_log(norms), LOG_ZERO)
    Z = Z / jnp.where(norms > 0, norms, 1.0)[:, None]
    rounds = jnp.asarray(_round_robin(m))
    tol = 4 * n * jnp.finfo(Z.dtype).eps

    def rotate(carry, pairs):
        log_s, Z, worst = carry
        i, j = pairs[:, 0], pairs[:, 1]
        i_big = log_s[i] >= log_s[j]
        b, s = jnp.where(i_big, i, j), jnp.where(i_big, j, i)
        zb, zs, lb, ls = Z[b], Z[s], log_s[b], log_s[s]
        rho = jnp.exp(ls - lb)
        gamma = jnp.sum(zb * zs, axis=1)
        one_m = 1.0 - rho * rho
        denom = one_m + jnp.sqrt(one_m * one_m + 4.0 * rho * rho * gamma * gamma)
        u = jnp.where(denom > 0, 2.0 * gamma / jnp.where(denom > 0, denom, 1.0), 0.0)
        c = 1.0 / jnp.sqrt(1.0 + (rho * u) ** 2)
        new_b = c[:, None] * (zb + (rho * rho * u)[:, None] * zs)
        new_s = c[:, None] * (zs - u[:, None] * zb)
        nb, ns = jnp.linalg.norm(new_b, axis=1), jnp.linalg.norm(new_s, axis=1)
        Z = Z.at[b].set(new_b / jnp.where(nb > 0, nb, 1.0)[:, None])
        Z = Z.at[s].set(new_s / jnp.where(ns > 0, ns, 1.0)[:, None])
        log_s = log_s.at[b].set(jnp.maximum(lb + _safe_log(nb), LOG_ZERO))
        log_s = log_s.at[s].set(jnp.maximum(ls + _safe_log(ns), LOG_ZERO))
        return (log_s, Z, jnp.maximum(worst, jnp.max(jnp.abs(gamma)))), None

    def sweep(state):
        log_s, Z, _, k = state
        (log_s, Z, worst), _ = jax.lax.scan(rotate, (log_s, Z, jnp.zeros((), Z.dtype)), rounds)
        return log_s, Z, worst, k + 1

    def more(state):
        return (state[2] > tol) & (state[3] < max_sweeps)

    state = (log_s, Z, jnp.asarray(jnp.inf, Z.dtype), 0)
    log_s, _, _, _ = jax.lax.while_loop(more, sweep, state)
    out = -jnp.sort(-log_s)[:n]
    return jnp.where(out <= LOG_ZERO, -jnp.inf, out)


def _finish(log_s: Array, Z: Array) -> Array:
    """Log singular values of ``diag(e^log_s) Z``: one weighted pivoted QR of the transpose first
    (same singular values, now a graded triangle), after which Jacobi needs ~2 sweeps, not ~8."""
    eye = jnp.eye(Z.shape[0], dtype=Z.dtype)
    _, log_s, _, Z = _graded_step(eye, log_s, jnp.zeros_like(log_s), eye, Z.T)
    return graded_log_singular_values(log_s, Z)


def product_log_singular_values(J: Array, lags=None) -> Array:
    """Natural-log singular values, descending, of every ``P[t] = J[T-1] @ ... @ J[t]``.

    J: (T, n, n). Returns (T, n) with row t for ``ds_T/ds_t`` — or, given ``lags``, (L, n) with
    row i for lag ``lags[i]`` (the product of the last ``lags[i]`` Jacobians; lags sorted and
    unique). Finite for products far outside float range; ``-inf`` marks an exactly zero
    singular value (e.g. units dead at every step of a ReLU RNN).
    """
    check_jacobians(J)
    T = J.shape[0]
    if lags is None:
        slot, count = jnp.arange(T, dtype=jnp.int32), T
    else:
        lags = check_lags(lags, T)
        slot, count = _lag_slots(T, lags), len(lags)
    return _product_log_sv(J, slot, count)


@functools.partial(jax.jit, static_argnums=2)
def _product_log_sv(J: Array, slot: Array, count: int) -> Array:
    """The scan of ``product_log_singular_values``; row ``slot[t]`` of the result is P[t]'s
    (``slot[t] == count`` drops it). Jitted here so eager callers do not retrace it per call."""
    n = J.shape[1]
    eye = jnp.eye(n, dtype=J.dtype)

    def body(carry, inp):
        U, log_s, comp, Z, buf_l, buf_z = carry
        J_t, i = inp
        U, log_s, comp, Z = _graded_step(U, log_s, comp, Z, J_t.T)
        buf_l = jax.lax.dynamic_update_index_in_dim(buf_l, log_s, i, 0)
        buf_z = jax.lax.dynamic_update_index_in_dim(buf_z, Z, i, 0)
        return (U, log_s, comp, Z, buf_l, buf_z), None

    zeros = jnp.zeros((n,), J.dtype)
    init = (eye, zeros, zeros, eye,
            jnp.zeros((count + 1, n), J.dtype), jnp.zeros((count + 1, n, n), J.dtype))
    (_, _, _, _, buf_l, buf_z), _ = jax.lax.scan(body, init, (J, slot), reverse=True)
    # The products are done; their SVDs are independent, so all of them run as one batch.
    return jax.vmap(_finish)(buf_l[:-1], buf_z[:-1])
