"""The step function of a registered cell on a flat state: ``step_fn(s_N, x_D) -> s_N``.

Everything in ``rnn_spectra.spectral`` works on one sequence and a 1-D state ``s`` of size n,
the flattened carry (LSTM: ``c`` and ``h`` concatenated by ``jax.flatten_util.ravel_pytree``), so
``jax.jacfwd(step_fn)`` is the (n, n) per-step Jacobian ``ds_{t+1}/ds_t`` for every cell alike and
nobody flattens carries by hand.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from rnn_spectra.errors import UserError

Array = jax.Array


class SpectralInputError(UserError, ValueError):
    """Arrays whose shapes do not fit the cell or the request (a ValueError too, for library users)."""


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
