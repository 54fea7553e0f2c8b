"""Gradient flow: ``||dL/ds_t||`` at every time step t, from one backward pass.

Add a zero perturbation ``eps_t`` to each state as the scan produces it; ``dL/d eps_t`` is the
total derivative of the loss with respect to ``s_t`` (through every later step), so
``jax.grad`` with respect to all ``eps`` at once gives the whole profile for the price of one
backward pass — the quantity vanishing/exploding-gradient theory is about (Pascanu et al. 2013).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from rnn_spectra.dynamics import make_step_fn
from rnn_spectra.errors import SpectralInputError
from rnn_spectra.spectral.jacobians import StepFn

Array = jax.Array


def gradient_flow(step_fn: StepFn, s0: Array, xs: Array,
                  loss_of_states: Callable[[Array], Array], return_loss: bool = False):
    """``||dL/ds_t||_2`` for t = 1..T: shape (T,); entry t-1 belongs to ``s_t = step_fn(s_{t-1}, xs[t-1])``.

    ``loss_of_states(states_TxN) -> scalar`` sees the states s_1..s_T. ``step_fn`` may act on any
    state shape (e.g. a batch (B, n) via ``jax.vmap``); the norm is then over the whole state.
    With ``return_loss``, returns ``(norms, loss)`` from the same pass.
    """
    T = xs.shape[0]

    def loss(eps):
        def body(s, inp):
            x, e = inp
            s = step_fn(s, x) + e
            return s, s

        _, states = jax.lax.scan(body, s0, (xs, eps))
        return loss_of_states(states)

    value, grads = jax.value_and_grad(loss)(jnp.zeros((T, *s0.shape), s0.dtype))
    norms = jnp.sqrt(jnp.sum(grads.reshape(T, -1) ** 2, axis=1))
    return (norms, value) if return_loss else norms


def model_gradient_flow(model, params, inputs_BxTxD: Array, targets: Array,
                        loss_fn: Callable[[Array, Array], Array], return_loss: bool = False):
    """``||dL/dS_t||`` (T,) of a ``SequenceModel``'s loss on a batch, S_t the (B, n) states at t.

    ``loss_fn(outputs, targets)`` is the task loss (a batch mean, as in training), so this is the
    per-time-step share of the training gradient. States are the flattened carries (LSTM: c and h).
    With ``return_loss``, returns ``(norms, loss)``.
    """
    if inputs_BxTxD.ndim != 3 or inputs_BxTxD.shape[-1] != model.input_size:
        raise SpectralInputError(
            f"inputs must have shape (batch, time, {model.input_size}), got {tuple(inputs_BxTxD.shape)}"
        )
    cs = make_step_fn(model, params["cell"])
    B = inputs_BxTxD.shape[0]
    s0 = jnp.broadcast_to(cs.s0, (B, cs.state_size))

    def loss_of_states(states_TxBxN):
        h = jax.vmap(jax.vmap(cs.hidden))(states_TxBxN)  # (T, B, H)
        head = lambda h: model.head.apply({"params": params["readout"]}, h)  # noqa: E731
        out = head(h[-1]) if model.readout == "last" else jnp.swapaxes(head(h), 0, 1)
        return loss_fn(out, targets)

    return gradient_flow(jax.vmap(cs.step_fn), s0, jnp.swapaxes(inputs_BxTxD, 0, 1), loss_of_states,
                         return_loss=return_loss)
