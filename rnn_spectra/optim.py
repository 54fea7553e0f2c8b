"""Optax optimizers, learning-rate schedules and gradient clipping from an ``OptimConfig``.

The peak learning rate and the clip threshold are *state*, not constants
(``optax.inject_hyperparams``): a sweep vmaps ``tx.init`` over members with different values and
trains them all with one compiled program, and a single run is numerically the same program.
The chain is always ``[clip, direction, schedule multiplier, -learning_rate, expRNN's own
learning-rate factor, IndRNN's projection]`` (the last two masked to those cells' params).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax

from rnn_spectra.config import OptimConfig
from rnn_spectra.errors import unknown_name

CLIP, LR = 0, 3  # positions in the chain of the injected hyperparameters


def make_schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    """Multiplier of the peak learning rate at each step (1.0 = peak)."""
    warm = min(cfg.warmup_steps, max(total_steps - 1, 0))
    if cfg.schedule == "constant":
        return optax.constant_schedule(1.0)
    if cfg.schedule == "cosine":
        return optax.cosine_decay_schedule(1.0, decay_steps=max(total_steps, 1))
    if cfg.schedule == "warmup_cosine":
        return optax.warmup_cosine_decay_schedule(0.0, 1.0, warm, max(total_steps, warm + 1))
    if cfg.schedule == "warmup_constant":
        return optax.join_schedules(
            [optax.linear_schedule(0.0, 1.0, max(warm, 1)), optax.constant_schedule(1.0)], [warm]
        )
    raise unknown_name("learning-rate schedule", cfg.schedule,
                       ["constant", "cosine", "warmup_cosine", "warmup_constant"])


def make_clip(kind: str, threshold: float) -> optax.GradientTransformation:
    """none | global_norm (Pascanu et al. 2013) | value (element-wise, uRNN) | agc (Brock 2021)."""
    if kind == "none":
        # Same structure as global_norm so that clipped and unclipped members share one program;
        # with an infinite threshold the gradient passes through unchanged, bit for bit.
        kind, threshold = "global_norm", math.inf
    factories = {
        "global_norm": optax.clip_by_global_norm,
        "value": optax.clip,
        "agc": optax.adaptive_grad_clip,
    }
    if kind not in factories:
        raise unknown_name("clipping", kind, ["none", *factories])
    return optax.inject_hyperparams(factories[kind])(threshold)


def _direction(cfg: OptimConfig) -> optax.GradientTransformation:
    if cfg.name == "adam":
        return optax.scale_by_adam()
    if cfg.name == "rmsprop":
        return optax.scale_by_rms(decay=cfg.rmsprop_decay)
    if cfg.name == "sgd":
        return optax.trace(decay=cfg.momentum) if cfg.momentum else optax.identity()
    raise unknown_name("optimizer", cfg.name, ["adam", "rmsprop", "sgd"])


def _named(name: str):
    """Mask: the leaves whose tree path contains the dict key ``name``."""

    def mask(tree):
        return jax.tree_util.tree_map_with_path(
            lambda path, _: any(getattr(k, "key", None) == name for k in path), tree)

    return mask


def project_abs(bound: float) -> optax.GradientTransformation:
    """Updates that land the params in [-bound, bound]: a projected step (IndRNN's |u| bound)."""

    def update(updates, state, params):
        if params is None:
            raise ValueError("project_abs needs the params")
        new = jax.tree_util.tree_map(lambda p, u: jnp.clip(p + u, -bound, bound) - p, params, updates)
        return new, state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(cfg: OptimConfig, total_steps: int, *, recurrent_bound: float | None = None,
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """``(tx, multiplier_schedule)``; clip first (on the raw gradient), then the optimizer.

    Two masked stages follow ``-learning_rate`` for every cell (a no-op where the params have no
    such leaf, so the chain and the CLIP/LR positions are the same for all cells): expRNN's skew
    generator ``A`` gets ``orthogonal_lr_factor`` times the learning rate (Lezcano-Casado 2019:
    10x smaller), and IndRNN's ``u`` is projected onto ``|u| <= recurrent_bound`` (Li et al. 2018).
    """
    from rnn_spectra.constrained_cells import EXPRNN_SKEW, INDRNN_DIAG

    schedule = make_schedule(cfg, total_steps)
    bound = math.inf if recurrent_bound is None else recurrent_bound
    tx = optax.chain(
        make_clip(cfg.clip, cfg.clip_value),
        _direction(cfg),
        optax.scale_by_schedule(schedule),
        optax.inject_hyperparams(optax.scale_by_learning_rate)(learning_rate=cfg.learning_rate),
        optax.masked(optax.scale(cfg.orthogonal_lr_factor), _named(EXPRNN_SKEW)),
        optax.masked(project_abs(bound), _named(INDRNN_DIAG)),
    )
    return tx, schedule


def set_hyperparams(opt_state, *, learning_rate=None, clip_value=None):
    """A copy of ``opt_state`` with a new peak learning rate and/or clip threshold."""
    parts = list(opt_state)
    if learning_rate is not None:
        hp = dict(parts[LR].hyperparams, learning_rate=jnp.asarray(learning_rate, jnp.float32))
        parts[LR] = parts[LR]._replace(hyperparams=hp)
    if clip_value is not None:
        (name,) = parts[CLIP].hyperparams
        hp = {name: jnp.asarray(clip_value, jnp.float32)}
        parts[CLIP] = parts[CLIP]._replace(hyperparams=hp)
    return type(opt_state)(parts)


def learning_rate(opt_state, schedule: optax.Schedule, step):
    """The learning rate applied at ``step``: peak (from the state) times the schedule."""
    return opt_state[LR].hyperparams["learning_rate"] * schedule(step)
