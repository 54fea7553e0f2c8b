"""Lyapunov exponents of the state dynamics by the QR method (Benettin et al. 1980).

Evolve an orthonormal set of k tangent vectors through the step Jacobians, re-orthonormalise by
QR, and average ``ln |R_ii|``: the result is the k largest exponents in nats per step (Engelken et
al. 2020 and Vogt et al. 2022 report log base 2; we use natural logs). The singular values of
``ds_T/ds_t`` grow like ``exp((T - t) lambda_i)``, so lambda_1 > 0 explodes, all lambda_i < 0 vanish.

``discard`` (burn-in): the frame is pushed through the first ``discard`` steps but their stretching
is not counted, so the average is over steps ``discard .. T-1`` only: the transient from the zero
state, and the frame's own alignment with the leading directions, stay out of it (``discard=0``:
from step 0, the numbers of before). ``near_zero_count`` and ``kaplan_yorke_dimension`` summarise
a spectrum.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from rnn_spectra.dynamics import initial_frame, qr_frame_scan
from rnn_spectra.errors import SpectralInputError
from rnn_spectra.spectral.jacobians import StepFn, check_jacobians, trajectory

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


def _check_discard(discard, T: int):
    """A Python int must lie in [0, T-1]; a traced one (per probe, under vmap) is clipped there."""
    if isinstance(discard, (int, np.integer)) and not isinstance(discard, bool):
        if not 0 <= discard < T:
            raise SpectralInputError(
                f"discard={discard} burn-in steps leave nothing of a sequence of T={T} steps; "
                f"choose 0 <= discard <= {T - 1}")
        return int(discard)
    if isinstance(discard, bool) or not jnp.issubdtype(jnp.result_type(discard), jnp.integer):
        raise SpectralInputError(f"discard must be an integer number of steps, got {discard!r}")
    return jnp.clip(discard, 0, T - 1)


def lyapunov_spectrum(step_fn: StepFn, s0: Array, xs: Array, k: int | None = None,
                      reorth_every: int = 1, method: str = "jvp", key: Array | None = None,
                      states: Array | None = None, discard=0) -> Array:
    """The k largest Lyapunov exponents (nats per step, descending) along ``s_{t+1} = step_fn(s_t, xs[t])``.

    s0: (n,); xs: (T, ...); k defaults to n. ``method="jvp"`` is matrix-free: the k frame vectors
    are pushed through ``jax.linearize`` of each step (O(k n^2) per step, no (n, n) Jacobian, so
    n = 1024+ is affordable for small k); ``"jacobian"`` forms each step's Jacobian with
    ``jax.jacfwd`` and multiplies (cheaper when k is close to n). Both give the same numbers.
    Re-orthonormalising less often (``reorth_every`` > 1) is faster but may overflow. ``states``
    (T+1, n): the trajectory, if the caller already has it. ``key``: the random initial frame.
    ``discard``: burn-in steps (an int in [0, T-1], or a traced integer, e.g. one per probe under
    ``vmap``) pushed through but not counted: the exponents average steps ``discard .. T-1``.
    """
    if s0.ndim != 1:
        raise SpectralInputError(f"s0 must be a 1-D state of shape (n,), got {tuple(s0.shape)}")
    n = s0.shape[0]
    k = _check_k(k, n)
    _check_reorth(reorth_every)
    if method not in METHODS:
        raise SpectralInputError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    discard = _check_discard(discard, xs.shape[0])
    states = trajectory(step_fn, s0, xs) if states is None else states
    Q0 = initial_frame(n, k, s0.dtype, key)

    if method == "jvp":
        def push(_, Q, inp):
            s_t, x_t = inp
            _, tangent = jax.linearize(lambda s: step_fn(s, x_t), s_t)
            return None, jax.vmap(tangent, in_axes=1, out_axes=1)(Q)
    else:
        def push(_, Q, inp):
            s_t, x_t = inp
            return None, jax.jacfwd(step_fn)(s_t, x_t) @ Q

    return qr_frame_scan(push, (states[:-1], xs), Q0, xs.shape[0], discard=discard,
                         reorth_every=reorth_every)


def lyapunov_from_jacobians(J: Array, k: int | None = None, reorth_every: int = 1,
                            key: Array | None = None, discard=0) -> Array:
    """Same as ``lyapunov_spectrum`` from materialised step Jacobians J (T, n, n), J[t] applied first at t=0."""
    check_jacobians(J)
    n = J.shape[1]
    k = _check_k(k, n)
    _check_reorth(reorth_every)
    discard = _check_discard(discard, J.shape[0])
    Q0 = initial_frame(n, k, J.dtype, key)
    return qr_frame_scan(lambda _, Q, J_t: (None, J_t @ Q), J, Q0, J.shape[0], discard=discard,
                         reorth_every=reorth_every)


NEAR_ZERO = 0.01  # |lambda| <= this (nats per step): a direction that neither vanishes nor explodes


def near_zero_count(lam: Array, tol: float = NEAR_ZERO) -> Array:
    """How many exponents lie within ``tol`` of zero (last axis): the directions along which
    ``ds_T/ds_t`` neither vanishes nor explodes over long lags (-inf is never near zero)."""
    return jnp.sum(jnp.abs(lam) <= tol, axis=-1)


NOISE_FLOOR = 1e-6  # |lambda| below this (nats per step) is float32 rounding of a neutral direction


def kaplan_yorke_dimension(lam: Array) -> Array:
    """Kaplan-Yorke dimension ``j + sum_{i<=j} lambda_i / |lambda_{j+1}|`` of a spectrum (last axis,
    any order): j is the largest count whose partial sum of the sorted exponents is still >= 0.
    0 when lambda_1 < 0; the number of exponents given when every partial sum is >= 0 (then it is
    only a lower bound unless the spectrum is complete); -inf exponents add nothing. Exponents
    within ``NOISE_FLOOR`` of zero count as zero: for exactly neutral directions (an IRNN's live
    units) the sign of their float32 rounding would otherwise decide the dimension."""
    lam = jnp.where(jnp.abs(lam) < NOISE_FLOOR, 0.0, lam)
    lam = -jnp.sort(-lam, axis=-1)
    m = lam.shape[-1]
    partial = jnp.cumsum(lam, axis=-1)
    j = jnp.sum(partial >= 0, axis=-1)  # partial sums decrease once they turn negative
    idx = jnp.clip(j, 1, m) - 1
    s_j = jnp.take_along_axis(partial, idx[..., None], axis=-1)[..., 0]
    nxt = jnp.take_along_axis(lam, jnp.clip(j, 0, m - 1)[..., None], axis=-1)[..., 0]
    frac = jnp.where(jnp.isfinite(nxt) & (nxt < 0), s_j / jnp.abs(nxt), 0.0)
    return jnp.where(j == 0, 0.0, jnp.where(j >= m, float(m), j + frac))
