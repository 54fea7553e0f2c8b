"""Lyapunov exponents of the state dynamics by the QR method (Benettin et al. 1980).

Evolve an orthonormal set of k tangent vectors through the step Jacobians, re-orthonormalise by
QR, and average ``ln |R_ii|``: the result is the k largest exponents in nats per step (Engelken et
al. 2020 and Vogt et al. 2022 report log base 2; we use natural logs). The singular values of
``ds_T/ds_t`` grow like ``exp((T - t) lambda_i)``, so lambda_1 > 0 explodes, all lambda_i < 0 vanish.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rnn_spectra.spectral.cellstep import SpectralInputError
from rnn_spectra.spectral.jacobians import StepFn, check_jacobians, kahan_add, trajectory

Array = jax.Array
METHODS = ("jvp", "jacobian")


def _check_k(k: int | None, n: int) -> int:
    k = n if k is None else k
    if not isinstance(k, int) or isinstance(k, bool) or k < 1 or k > n:
        raise SpectralInputError(
            f"k={k!r} Lyapunov exponents requested but the state has n={n} dimensions; choose 1 <= k <= {n}"
        )
    return k


def _check_reorth(reorth_every: int) -> None:
    if not isinstance(reorth_every, int) or isinstance(reorth_every, bool) or reorth_every < 1:
        raise SpectralInputError(f"reorth_every must be a positive int, got {reorth_every!r}")


def initial_frame(n: int, k: int, dtype=jnp.float32, key: Array | None = None) -> Array:
    """A fixed random orthonormal (n, k) frame: the QR method's starting tangent vectors.

    Random rather than the first k unit vectors, which can sit in a subspace the dynamics
    annihilates (e.g. dead ReLU units) and then report -inf for directions that are alive.
    """
    key = jax.random.PRNGKey(0) if key is None else key
    q, r = jnp.linalg.qr(jax.random.normal(key, (n, k), dtype))
    return q * jnp.where(jnp.diagonal(r) < 0, -1.0, 1.0).astype(dtype)


def _qr_scan(push, inputs, Q0: Array, reorth_every: int, T: int) -> Array:
    """Shared QR loop: ``push(Q, inp) -> Q'`` applies one step's Jacobian to the frame.

    Sums ``ln |R_ii|`` at every re-orthonormalisation (every ``reorth_every`` steps and at the
    last step) and divides by T. Sorted descending: the QR method orders them only approximately.
    """

    def qr_update(Q, total, comp):
        Q, R = jnp.linalg.qr(Q)
        return (Q, *kahan_add(total, comp, jnp.log(jnp.abs(jnp.diagonal(R)))))

    def body(carry, inp):
        Q, total, comp, t = carry
        Q = push(Q, inp)
        if reorth_every == 1:  # static: no cond (which vmap would turn into computing both sides)
            Q, total, comp = qr_update(Q, total, comp)
        else:
            due = ((t + 1) % reorth_every == 0) | (t + 1 == T)
            Q, total, comp = jax.lax.cond(due, qr_update, lambda *a: a, Q, total, comp)
        return (Q, total, comp, t + 1), None

    zeros = jnp.zeros((Q0.shape[1],), Q0.dtype)
    init = (Q0, zeros, zeros, jnp.zeros((), jnp.int32))
    (_, total, _, _), _ = jax.lax.scan(body, init, inputs)
    return -jnp.sort(-total / T)


def lyapunov_spectrum(step_fn: StepFn, s0: Array, xs: Array, k: int | None = None,
                      reorth_every: int = 1, method: str = "jvp", key: Array | None = None,
                      states: Array | None = None) -> Array:
    """The k largest Lyapunov exponents (nats per step, descending) along ``s_{t+1} = step_fn(s_t, xs[t])``.

    s0: (n,); xs: (T, ...); k defaults to n. ``method="jvp"`` is matrix-free: the k frame vectors
    are pushed through ``jax.linearize`` of each step (O(k n^2) per step, no (n, n) Jacobian, so
    n = 1024+ is affordable for small k); ``"jacobian"`` forms each step's Jacobian with
    ``jax.jacfwd`` and multiplies (cheaper when k is close to n). Both give the same numbers.
    Re-orthonormalising less often (``reorth_every`` > 1) is faster but may overflow. ``states``
    (T+1, n): the trajectory, if the caller already has it. ``key``: the random initial frame.
    """
    if s0.ndim != 1:
        raise SpectralInputError(f"s0 must be a 1-D state of shape (n,), got {tuple(s0.shape)}")
    n = s0.shape[0]
    k = _check_k(k, n)
    _check_reorth(reorth_every)
    if method not in METHODS:
        raise SpectralInputError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    states = trajectory(step_fn, s0, xs) if states is None else states
    Q0 = initial_frame(n, k, s0.dtype, key)

    if method == "jvp":
        def push(Q, inp):
            s_t, x_t = inp
            _, tangent = jax.linearize(lambda s: step_fn(s, x_t), s_t)
            return jax.vmap(tangent, in_axes=1, out_axes=1)(Q)
    else:
        def push(Q, inp):
            s_t, x_t = inp
            return jax.jacfwd(step_fn)(s_t, x_t) @ Q

    return _qr_scan(push, (states[:-1], xs), Q0, reorth_every, xs.shape[0])


def lyapunov_from_jacobians(J: Array, k: int | None = None, reorth_every: int = 1,
                            key: Array | None = None) -> Array:
    """Same as ``lyapunov_spectrum`` from materialised step Jacobians J (T, n, n), J[t] applied first at t=0."""
    check_jacobians(J)
    n = J.shape[1]
    k = _check_k(k, n)
    _check_reorth(reorth_every)
    Q0 = initial_frame(n, k, J.dtype, key)
    return _qr_scan(lambda Q, J_t: J_t @ Q, J, Q0, reorth_every, J.shape[0])
