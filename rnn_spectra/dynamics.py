"""A model as a dynamical system: its one-step map on the flat state, and the QR method.

``make_step_fn(model, cell_params)`` gives ``step_fn(s_N, x_D) -> s_N`` on the flattened carry
(LSTM: ``c`` and ``h`` concatenated by ``jax.flatten_util.ravel_pytree``), so
``jax.jacfwd(step_fn)`` is the (n, n) per-step Jacobian ``ds_{t+1}/ds_t`` for every cell alike and
nobody flattens carries by hand. ``qr_frame_scan`` is the QR method's loop (Benettin et al. 1980):
it pushes an orthonormal frame through the step Jacobians and sums ``ln |R_ii|``.

Both sit below the analysis package and the training code alike: ``spectral`` measures with them
(``lyapunov_spectrum``, the monitor, fixed points) and ``control``'s Lyapunov regulariser trains
with them, so training does not depend on the analysis package.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from rnn_spectra.errors import SpectralInputError

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class CellStep:
    """A cell's step on flat states, for fixed params.

    ``step_fn(s_N, x_D) -> s_N``; ``s0`` the zero carry, flattened, shape (n,); ``unravel(s)`` the
    carry pytree; ``hidden(s)`` the cell's output h (H,) (LSTM: the h half of the state).
    """

    step_fn: Callable[[Array, Array], Array]
    s0: Array
    unravel: Callable[[Array], object]
    hidden: Callable[[Array], Array]
    cell: str
    state_size: int
    hidden_size: int
    input_size: int


def state_size(model) -> int:
    """n, the size of the flat state of ``model``'s cell (H; 2H for the LSTM's (c, h))."""
    return int(ravel_pytree(model.initial_carry(()))[0].shape[0])


def _check_params(model, cell_params) -> None:
    """Refuse cell params that belong to another cell or hidden size, naming what fits."""
    want = jax.eval_shape(model.init, jax.random.PRNGKey(0))["cell"]
    want_shapes = {jax.tree_util.keystr(p): tuple(v.shape)
                   for p, v in jax.tree_util.tree_leaves_with_path(want)}
    try:
        got_shapes = {jax.tree_util.keystr(p): tuple(jnp.shape(v))
                      for p, v in jax.tree_util.tree_leaves_with_path(cell_params)}
    except TypeError:
        got_shapes = {}
    if got_shapes != want_shapes:
        diff = [f"{k} {got_shapes.get(k)} (expected {want_shapes.get(k)})"
                for k in sorted(set(want_shapes) | set(got_shapes)) if got_shapes.get(k) != want_shapes.get(k)]
        raise SpectralInputError(
            f"cell params do not fit cell {model.config.cell!r} with hidden_size="
            f"{model.config.hidden_size} and input_size={model.input_size}: " + "; ".join(diff[:4])
        )


def make_step_fn(model, cell_params, carry0=None) -> CellStep:
    """The flat-state step of ``model``'s cell (a ``SequenceModel``) with ``cell_params``.

    ``carry0`` (unbatched carry pytree) defaults to the model's zero carry.
    """
    _check_params(model, cell_params)
    carry0 = model.initial_carry(()) if carry0 is None else carry0
    s0, unravel = ravel_pytree(carry0)
    n, d = s0.shape[0], model.input_size
    cell_step = model.cell_step(cell_params)

    def step_fn(s, x):
        # Shapes are static under jit, so these checks cost nothing at run time.
        if s.shape != (n,):
            raise SpectralInputError(
                f"state must have shape ({n},) for cell {model.config.cell!r} "
                f"(hidden_size={model.config.hidden_size}), got {s.shape}"
            )
        if x.shape != (d,):
            raise SpectralInputError(
                f"input step must have shape ({d},) for this model (input_size={d}), got {x.shape}"
            )
        carry, _ = cell_step(unravel(s), x)
        return ravel_pytree(carry)[0]

    def hidden(s):
        carry = unravel(s)
        # Every registered cell's carry is h itself or ends with h (LSTM: (c, h)).
        return carry[-1] if isinstance(carry, (tuple, list)) else carry

    return CellStep(step_fn, s0, unravel, hidden, model.config.cell, n,
                    model.config.hidden_size, d)


def kahan_add(total: Array, comp: Array, value: Array) -> tuple[Array, Array]:
    """Compensated ``total + value``: thousands of float32 additions of ~0.4 to ~2000 would each
    lose up to 1e-4 (T = 5000 at W = 1.5 I ends 0.1 off without it). Non-finite totals pass through."""
    y = value - comp
    new = total + y
    comp = jnp.where(jnp.isfinite(new), (new - total) - y, 0.0)
    return new, comp


def initial_frame(n: int, k: int, dtype=jnp.float32, key: Array | None = None) -> Array:
    """A fixed random orthonormal (n, k) frame: the QR method's starting tangent vectors.

    Random rather than the first k unit vectors, which can sit in a subspace the dynamics
    annihilates (e.g. dead ReLU units) and then report -inf for directions that are alive.
    """
    key = jax.random.PRNGKey(0) if key is None else key
    q, r = jnp.linalg.qr(jax.random.normal(key, (n, k), dtype))
    return q * jnp.where(jnp.diagonal(r) < 0, -1.0, 1.0).astype(dtype)


def qr_frame_scan(push, inputs, Q0: Array, T: int, *, carry0=None, discard=0, reorth_every: int = 1,
                  shift: float = 0.0, compensated: bool = True) -> Array:
    """The QR method's loop: the k exponents (k,) of the frame ``Q0`` (n, k), descending.

    ``push(carry, Q, inp) -> (carry, JQ)`` applies one step's Jacobian to the frame; ``carry``
    (from ``carry0``) is whatever the push threads through the scan: the state, when the
    trajectory runs in the same scan (the regulariser), or None (``inputs`` then holds the states).

    Sums ``ln |R_ii|`` at every re-orthonormalisation (every ``reorth_every`` steps and at the
    last step) from step ``discard`` on, and divides by ``T - discard``. Sorted descending: the QR
    method orders them only approximately. During the burn-in a re-orthonormalisation is forced
    at its last step, so no discarded stretching is counted, and (compensated sums, the
    measurements; the regulariser's shifted frame is never annihilated) a frame that a step annihilated
    (some ``R_ii == 0``: a zero Jacobian, e.g. a ReLU net at the zero state) restarts from ``Q0``,
    so it does not enter the counted steps as an arbitrary frame.

    ``shift``: re-orthonormalise ``JQ + shift * Q`` instead of ``JQ``, so a direction a step
    annihilates stretches by ``shift`` instead of 0 and the QR's backward pass (which divides by
    R) stays finite: the regulariser differentiates through this loop. ``compensated``: Kahan
    sums for measurements over thousands of steps; plain sums are the program the published
    control studies trained with (Kahan moves their exponents by ~1e-7, so their numbers would
    no longer reproduce bit for bit).
    """
    counted = not (isinstance(discard, int) and discard == 0)  # static: discard=0 is the old loop

    def add(total, comp, logs, t):
        if compensated:
            return kahan_add(total, comp, logs)
        return total + (jnp.where(t >= discard, logs, 0.0) if counted else logs), comp

    def qr_update(Q, total, comp, t):
        Qn, R = jnp.linalg.qr(Q)
        logs = jnp.log(jnp.abs(jnp.diagonal(R)))
        if not counted or not compensated:
            return (Qn, *add(total, comp, logs, t))
        burn_in = t < discard
        Qn = jnp.where(burn_in & jnp.any(jnp.diagonal(R) == 0), Q0, Qn)
        new_total, new_comp = add(total, comp, logs, t)
        return (Qn, jnp.where(burn_in, total, new_total), jnp.where(burn_in, comp, new_comp))

    def body(state, inp):
        carry, Q, total, comp, t = state
        carry, JQ = push(carry, Q, inp)
        if shift:
            JQ = JQ + shift * Q
        if reorth_every == 1:  # static: no cond (which vmap would turn into computing both sides)
            Q, total, comp = qr_update(JQ, total, comp, t)
        else:
            due = ((t + 1) % reorth_every == 0) | (t + 1 == T)
            if counted:
                due = due | (t + 1 == discard)
            Q, total, comp = jax.lax.cond(due, qr_update, lambda *a: a[:3], JQ, total, comp, t)
        return (carry, Q, total, comp, t + 1), None

    zeros = jnp.zeros((Q0.shape[1],), Q0.dtype)
    init = (carry0, Q0, zeros, zeros, jnp.zeros((), jnp.int32))
    (_, _, total, _, _), _ = jax.lax.scan(body, init, inputs)
    return -jnp.sort(-total / (T - discard if counted else T))
