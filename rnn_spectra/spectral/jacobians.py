"""Per-step Jacobians ``J[t] = ds_{t+1}/ds_t`` along a trajectory and their products ``ds_T/ds_t``.

The design rule: one scan for the trajectory, ``jax.jacfwd`` of *one step* vmapped over time for
the Jacobians, and products by a reverse cumulative product — never by differentiating the whole
unroll once per t (that costs T unrolls of T steps; this costs one).
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rnn_spectra.dynamics import kahan_add
from rnn_spectra.errors import SpectralInputError
from rnn_spectra.spectral.matrices import lanczos_top_singular_value

Array = jax.Array
StepFn = Callable[[Array, Array], Array]


def _check_state(s0: Array, xs: Array) -> None:
    if s0.ndim != 1:
        raise SpectralInputError(f"s0 must be a 1-D state of shape (n,), got {tuple(s0.shape)}")
    if xs.ndim < 1 or xs.shape[0] < 1:
        raise SpectralInputError(f"xs must have a leading time axis of length >= 1, got {tuple(xs.shape)}")


def check_jacobians(J: Array) -> None:
    if J.ndim != 3 or J.shape[1] != J.shape[2] or J.shape[0] < 1:
        raise SpectralInputError(f"J must have shape (T, n, n) with T >= 1, got {tuple(J.shape)}")


def trajectory(step_fn: StepFn, s0: Array, xs: Array) -> Array:
    """States ``s_0 .. s_T`` of ``s_{t+1} = step_fn(s_t, xs[t])``, shape (T+1, n)."""
    _check_state(s0, xs)

    def body(s, x):
        s = step_fn(s, x)
        return s, s

    _, states = jax.lax.scan(body, s0, xs)
    return jnp.concatenate([s0[None], states], axis=0)


def step_jacobians(step_fn: StepFn, s0: Array, xs: Array) -> Array:
    """``J[t] = ds_{t+1}/ds_t`` at every step of the trajectory from ``s0``: shape (T, n, n)."""
    states = trajectory(step_fn, s0, xs)
    return jax.vmap(jax.jacfwd(step_fn))(states[:-1], xs)


def jacobian_products(J: Array, method: str = "scan") -> Array:
    """``P[t] = J[T-1] @ ... @ J[t] = ds_T/ds_t`` for every t: shape (T, n, n).

    ``method="scan"``: T sequential matmuls (least work). ``"associative"``: ``lax.associative_scan``,
    O(log T) depth for parallel hardware at ~2x the work. Plain float products: use
    ``product_log_singular_values`` when they may over/underflow.
    """
    check_jacobians(J)
    if method == "associative":
        # reverse=True folds from the end; with a@b the later Jacobian stays on the left.
        return jax.lax.associative_scan(lambda a, b: a @ b, J, reverse=True)
    if method != "scan":
        raise SpectralInputError(f"unknown method {method!r}; valid: associative, scan")

    def body(P, J_t):
        P = P @ J_t
        return P, P

    eye = jnp.eye(J.shape[1], dtype=J.dtype)
    _, P = jax.lax.scan(body, eye, J, reverse=True)
    return P


def check_lags(lags: Sequence[int], T: int) -> np.ndarray:
    """Lags as a sorted unique int array in [1, T], else a one-line error."""
    arr = np.unique(np.asarray(lags, dtype=np.int64).reshape(-1))
    if arr.size == 0 or arr[0] < 1 or arr[-1] > T:
        raise SpectralInputError(f"lags must be integers in [1, {T}] (T = sequence length), got {list(lags)}")
    return arr


def log_spaced_lags(T: int, num: int) -> np.ndarray:
    """Up to ``num`` distinct integer lags from 1 to T, log-spaced (fewer when T is small)."""
    return np.unique(np.round(np.geomspace(1, T, max(int(num), 1))).astype(np.int64))


def jacobian_products_at_lags(J: Array, lags: Sequence[int]) -> Array:
    """``ds_T/ds_{T-k}`` for each lag k only: shape (L, n, n), memory O(L n^2) instead of O(T n^2).

    Lag k is the product of the last k Jacobians, ``J[T-1] @ ... @ J[T-k]``.
    """
    check_jacobians(J)
    T, n = J.shape[0], J.shape[1]
    lags = check_lags(lags, T)
    slot = _lag_slots(T, lags)

    def body(carry, inp):
        P, buf = carry
        J_t, i = inp
        P = P @ J_t
        # Slot len(lags) is a scratch row for steps that are not a requested lag.
        return (P, jax.lax.dynamic_update_index_in_dim(buf, P, i, 0)), None

    buf = jnp.zeros((len(lags) + 1, n, n), J.dtype)
    (_, buf), _ = jax.lax.scan(body, (jnp.eye(n, dtype=J.dtype), buf), (J, slot), reverse=True)
    return buf[:-1]


def _lag_slots(T: int, lags: np.ndarray) -> Array:
    """For each t, the index of lag T-t in ``lags``, or len(lags) when T-t is not requested."""
    slot = np.full(T, len(lags), np.int32)
    slot[T - lags] = np.arange(len(lags))
    return jnp.asarray(slot)


def step_jacobian_stats(step_fn: StepFn, s0: Array, xs: Array,
                        states: Array | None = None, norm_steps: int | None = None
                        ) -> dict[str, Array]:
    """What each step's Jacobian ``J[t] = ds_{t+1}/ds_t`` does, along the trajectory from ``s0``.

    Returns (T,) arrays: ``norm`` the spectral norm ``||J[t]||_2`` (the quantity of Pascanu et
    al.'s bound ``||ds_T/ds_t|| <= prod ||J||``, for gated cells too, where no single matrix is
    it); ``dead`` how many state components have an all-zero row in ``J[t]`` (nothing flows into
    them from the state: a ReLU unit at or below zero, or a modReLU unit under its threshold);
    ``zero`` whether ``J[t]`` is exactly zero (nothing passes the step at all, e.g. a ReLU net at
    the zero state with a zero input and bias). One scan, one ``jacfwd`` and one SVD per step,
    memory O(n^2) whatever T. ``norm_steps`` (an int): ``norm`` from that many Lanczos steps on
    ``J^T J`` instead of the SVD (``matrices.lanczos_top_singular_value``, from one fixed random
    start vector): a lower bound on each ``||J[t]||_2`` at a fraction of the SVD's cost.
    """
    _check_state(s0, xs)
    states = trajectory(step_fn, s0, xs) if states is None else states
    jac = jax.jacfwd(step_fn)
    if norm_steps is None:
        top_sv = lambda J: jnp.linalg.svd(J, compute_uv=False)[0]
    else:
        # One fixed start for every step: a start carried over from the previous step has lost
        # the directions earlier steps squeezed, which a later step may stretch (warm-started
        # power iteration fell up to 35% short on the default tanh run at initialisation).
        v0 = jax.random.normal(jax.random.PRNGKey(0), states.shape[1:], states.dtype)
        top_sv = lambda J: lanczos_top_singular_value(J, v0, norm_steps)

    def body(_, inp):
        s_t, x_t = inp
        J = jac(s_t, x_t)
        dead_rows = jnp.all(J == 0, axis=1)
        norm = top_sv(J)
        return None, (norm, jnp.sum(dead_rows), jnp.all(dead_rows))

    _, (norm, dead, zero) = jax.lax.scan(body, None, (states[:-1], xs))
    return {"norm": norm, "dead": dead, "zero": zero}


def jacobian_stats(J: Array) -> dict[str, Array]:
    """``step_jacobian_stats`` from materialised step Jacobians J (T, n, n)."""
    check_jacobians(J)
    dead_rows = jnp.all(J == 0, axis=2)
    return {"norm": jnp.linalg.svd(J, compute_uv=False)[:, 0], "dead": jnp.sum(dead_rows, axis=1),
            "zero": jnp.all(dead_rows, axis=1)}


def step_norms(step_fn: StepFn, s0: Array, xs: Array, states: Array | None = None) -> Array:
    """``||ds_{t+1}/ds_t||_2`` at every step: (T,), without storing the T Jacobians."""
    return step_jacobian_stats(step_fn, s0, xs, states)["norm"]


def dead_prefix(zero: Array) -> Array:
    """The number of leading steps whose Jacobian is exactly zero (``zero`` (T,) booleans, as
    ``step_jacobian_stats`` returns them): T when every step is."""
    live = ~jnp.asarray(zero, bool)
    return jnp.where(jnp.any(live), jnp.argmax(live), live.shape[0])


def measurement_window(zero: Array, discard) -> tuple[Array, Array]:
    """``(t0, start)`` of one trajectory: t0 its ``dead_prefix``; ``start = min(t0 + discard, T-1)``
    the first step a windowed average counts (the dead prefix and a burn-in of ``discard`` steps
    are left out; at least the last step is always in)."""
    t0 = dead_prefix(zero)
    return t0, jnp.minimum(t0 + discard, jnp.asarray(zero).shape[0] - 1)


def window_summary(stats: dict[str, Array], start, n: int) -> dict[str, Array]:
    """Averages of ``step_jacobian_stats`` over the window ``start .. T-1``: ``step_norm`` the mean
    ``||J[t]||_2``, ``step_norm_max`` its largest value, ``dead_units`` the fraction of the n state
    components with an all-zero Jacobian row; ``zero_steps``: the fraction of *all* T steps whose
    Jacobian is zero."""
    norm = stats["norm"]
    T, n_dead = norm.shape[0], stats["dead"]
    window = jnp.arange(T) >= start
    steps = jnp.sum(window)
    return {
        "step_norm": jnp.sum(jnp.where(window, norm, 0.0)) / steps,
        "step_norm_max": jnp.max(jnp.where(window, norm, -jnp.inf)),
        "dead_units": jnp.sum(jnp.where(window, n_dead, 0)) / (steps * n),
        "zero_steps": jnp.mean(stats["zero"].astype(norm.dtype)),
    }


def lag_log_norms(step_fn: StepFn, s0: Array, xs: Array, lags: Sequence[int],
                  states: Array | None = None, start=None) -> Array:
    """``ln ||ds_T/ds_{T-k}||_2`` for each lag k: shape (L,), memory O(n^2) whatever T.

    One reverse scan: the running product ``P = ds_T/ds_t`` takes one step's Jacobian (``jacfwd``)
    at a time and is kept as ``exp(c) * P~`` with ``||P~||_F = 1`` so it never over/underflows.
    At the L lag steps a ``lax.cond`` takes the spectral norm of ``P~``. Its predicate depends
    only on t, never on the data, so under ``vmap`` (probe sequences, sweep members) it stays a
    real branch and the SVD runs L times, not T times; no (L, n, n) buffer is carried (copying
    one per step doubled the time on CPU). ``states`` (T+1, n): the trajectory, if known.

    ``start`` (an int or a traced integer, e.g. the ``dead_prefix`` of each probe): steps before
    it count as the identity, so a lag that reaches back before ``start`` measures
    ``ds_T/ds_start``. For a ReLU-type net that sits at the zero state until its first nonzero
    input, the Jacobians there are exactly zero and every lag reaching into them would be -inf
    although nothing of the sequence has been seen yet. None: every step as it is.
    """
    T = xs.shape[0]
    lags = check_lags(lags, T)
    states = trajectory(step_fn, s0, xs) if states is None else states
    n, dtype = states.shape[1], states.dtype
    is_lag = np.zeros(T, bool)
    is_lag[T - lags] = True
    jac = jax.jacfwd(step_fn)

    def top_log_sv(P):
        return jnp.log(jnp.linalg.svd(P, compute_uv=False)[0])

    def body(carry, inp):
        P, c, comp = carry
        s_t, x_t, record, t = inp
        if start is None:
            P = P @ jac(s_t, x_t)
        else:  # steps before start: P unchanged (their Jacobian counts as the identity)
            P = jnp.where(t < start, P, P @ jac(s_t, x_t))
        scale = jnp.sqrt(jnp.sum(P * P))
        c, comp = kahan_add(c, comp, jnp.log(scale))
        P = P / jnp.where(scale > 0, scale, 1.0)
        out = jax.lax.cond(record, top_log_sv, lambda P: jnp.zeros((), dtype), P)
        return (P, c, comp), c + out

    zero = jnp.zeros((), dtype)
    init = (jnp.eye(n, dtype=dtype), zero, zero)
    _, per_t = jax.lax.scan(body, init, (states[:-1], xs, jnp.asarray(is_lag), jnp.arange(T)),
                            reverse=True)
    return per_t[T - lags]
