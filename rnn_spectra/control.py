"""Steering the spectrum (issue #15): a Lyapunov regulariser and a singular-value projection.

Three interventions, each off by default (``config.ControlConfig`` and ``model.recurrent_param``):

- ``control.lyapunov``: ``loss += weight * mean_i (lambda_i - target)^2``, lambda_1 >= ... >=
  lambda_k the top Lyapunov exponents of the *current* params along the first ``seq_len`` steps
  (0: the whole sequence, so that the window the regulariser steers is the one the monitor
  measures lambda_1 on, with the same burn-in fraction ``discard``) of the first ``probes``
  sequences of the training batch (averaged over them), by the QR method and differentiated
  through ``jnp.linalg.qr`` (as "gradient flossing", Engelken 2023).
- ``model.recurrent_param = svd_margin``: ``cells.MarginElmanCell`` (a parametrisation, nothing
  here).
- ``control.max_singular_value``: W_s's singular values clipped after every update, an Optax stage
  (``optim.project_singular_values``) that ``train.build`` adds through ``sv_bounds``.

Everything a member needs is arrays: the regulariser's weight and target live in the train state
(``state["control"]``) and the projection bound in the optimizer state, so members that differ
only in those values stack under one ``vmap`` (``sweep.program_signature`` blanks them); ``k``,
``seq_len``, ``probes``, ``discard``, ``every`` and ``until`` shape the program and stay static.
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp

from rnn_spectra.backend import single_threaded_blas
from rnn_spectra.cells import require_square_ws
from rnn_spectra.config import OFF_BY_DEFAULT, LyapunovControlConfig, RunConfig
from rnn_spectra.dynamics import initial_frame, make_step_fn, qr_frame_scan, state_size
from rnn_spectra.errors import ConfigError

Array = jax.Array
# The frame is pushed through J_t + FRAME_SHIFT * I rather than J_t: a direction that a step
# annihilates (dead ReLU units, a saturated tanh) then stretches by ~1e-4 instead of 0, so
# log|R_ii| >= ~ln(1e-4) = -9.2 and the QR's backward pass, which divides by R, stays finite. The
# bias is FRAME_SHIFT / sigma relative: nil for the exponents near 0 the regulariser steers.
FRAME_SHIFT = 1e-4


def check(run: RunConfig, model) -> None:
    """One-line errors for control settings that do not fit the model (``train.build``)."""
    lc = run.control.lyapunov
    if lc.weight > 0 and lc.probes > run.train.batch_size:
        raise ConfigError(f"control.lyapunov.probes={lc.probes} exceeds train.batch_size="
                          f"{run.train.batch_size}: the exponents are averaged over the batch's "
                          f"first sequences; choose 1 <= probes <= {run.train.batch_size}")
    m = run.model
    if m.recurrent_param == "free" and m.margin != OFF_BY_DEFAULT["model.margin"]:
        raise ConfigError(f"model.margin={m.margin!r} has no effect with model.recurrent_param=free; "
                          "set model.recurrent_param=svd_margin, or leave model.margin out")
    if lc.weight > 0:
        n = state_size(model)
        if lc.k > n:
            raise ConfigError(f"control.lyapunov.k={lc.k} exceeds the state size {n} of model.cell="
                              f"{run.model.cell!r} (hidden_size={run.model.hidden_size}); choose "
                              f"1 <= k <= {n}")
    if run.control.max_singular_value > 0:
        require_square_ws(run.model.cell, "control.max_singular_value")
        if run.model.recurrent_param != "free":
            raise ConfigError("control.max_singular_value projects a free W_s; with "
                              "model.recurrent_param=svd_margin bound W_s by model.margin instead")


def sv_bounds(run: RunConfig) -> dict[str, float]:
    """``{param: bound}`` for ``optim.make_optimizer``: W_s when the projection is on."""
    s = run.control.max_singular_value
    return {"W_s": s} if s > 0 else {}


def regularised(run: RunConfig) -> bool:
    """Whether the train step computes the regulariser at all (static: weight 0 traces nothing)."""
    return run.control.lyapunov.weight > 0


def lapack_threads(run: RunConfig):
    """Context for the training loop: one BLAS thread behind XLA:CPU's LAPACK calls when the
    train step makes them (the regulariser's QRs, the projection's SVD, svd_margin's expm, which
    solves by LU). On a busy 2-core CPU OpenBLAS's threads spin against XLA's pool: a (128, 128)
    SVD took 300-600 ms instead of 1-5 ms (as ``backend.single_threaded_blas`` found for the
    monitor). A no-op for a plain run; on GPU/TPU it only limits host numpy's BLAS meanwhile."""
    uses = regularised(run) or run.control.max_singular_value > 0 or \
        run.model.recurrent_param != "free"
    return single_threaded_blas() if uses else contextlib.nullcontext()


def initial_state(run: RunConfig) -> dict:
    """``state["control"]``: the regulariser's weight and target as arrays (sweepable)."""
    lc = run.control.lyapunov
    return {"weight": jnp.asarray(lc.weight, jnp.float32), "target": jnp.asarray(lc.target, jnp.float32)}


def window(lc: LyapunovControlConfig, seq_len: int) -> tuple[int, int]:
    """(T, discard): the probe window's length and its burn-in steps, both static."""
    return lc.window(seq_len)


def exponents(model, cell_params, xs_TxD: Array, k: int, discard: int) -> Array:
    """The k top Lyapunov exponents (k,), nats per step, descending, along one sequence from the
    zero carry; differentiable in ``cell_params``. The first ``discard`` steps are pushed through
    but not counted (as ``spectral.lyapunov_spectrum``); the frame is shifted (``FRAME_SHIFT``).
    The trajectory runs in the same scan as the frame, and the logs add up plainly (the program
    the published control studies trained with; ``dynamics.qr_frame_scan``)."""
    cs = make_step_fn(model, cell_params)

    def push(s, q, x):
        def tangent(v):
            return jax.jvp(lambda s_: cs.step_fn(s_, x), (s,), (v,))

        # The primal depends on s alone, so vmap over the k frame vectors computes it once.
        return jax.vmap(tangent, in_axes=1, out_axes=(None, 1))(q)

    q0 = initial_frame(cs.state_size, k, cs.s0.dtype)
    return qr_frame_scan(push, xs_TxD, q0, xs_TxD.shape[0], carry0=cs.s0, discard=discard,
                         shift=FRAME_SHIFT, compensated=False)


def probe_exponents(model, lc: LyapunovControlConfig, cell_params, inputs_BxTxD: Array) -> Array:
    """The k top exponents (k,) averaged over the first ``lc.probes`` sequences of the batch."""
    T, discard = window(lc, inputs_BxTxD.shape[1])
    xs = inputs_BxTxD[: min(lc.probes, inputs_BxTxD.shape[0]), :T]
    per_probe = jax.vmap(lambda x: exponents(model, cell_params, x, lc.k, discard))(xs)
    return jnp.mean(per_probe, axis=0)


def lyapunov_penalty(model, lc: LyapunovControlConfig, control_state: dict, cell_params,
                     inputs_BxTxD: Array, step: Array) -> tuple[Array, Array]:
    """``(penalty, lambdas_k)`` at ``step`` (0-based): ``weight * mean_i (lambda_i - target)^2``.

    At steps where the regulariser is off (``step % every != 0``, or ``step >= until > 0``) the
    penalty is 0 and the exponents NaN (not measured). With every = 1 and until = 0 there is no
    branch; otherwise a ``lax.cond`` skips the work in a single run (under a sweep's ``vmap`` the
    step is batched and both sides run, masked: same numbers, no saving)."""

    def measure(_):
        lam = probe_exponents(model, lc, cell_params, inputs_BxTxD)
        return control_state["weight"] * jnp.mean((lam - control_state["target"]) ** 2), lam

    if lc.every == 1 and lc.until == 0:
        return measure(None)
    active = step % lc.every == 0
    if lc.until:
        active = active & (step < lc.until)
    skip = lambda _: (jnp.zeros((), jnp.float32), jnp.full((lc.k,), jnp.nan, jnp.float32))  # noqa: E731
    return jax.lax.cond(active, measure, skip, None)


def check_resume(w: str, run: RunConfig, old_config: dict | None, start: int) -> None:
    """``control.lyapunov.until`` may change on resume only where it changes steps not yet taken."""
    old = ((old_config or {}).get("control") or {}).get("lyapunov") or {}
    old_until, new_until = old.get("until", 0), run.control.lyapunov.until
    if start == 0 or not regularised(run) or not isinstance(old_until, int) or old_until == new_until:
        return
    if min(old_until or start, start) != min(new_until or start, start):
        raise ConfigError(
            f"control.lyapunov.until {old_until} -> {new_until} changes which of the {start} steps "
            f"{w} has already trained were regularised; resume with an until of 0 or >= {start} "
            f"(or {old_until}), or start a new --workdir")
