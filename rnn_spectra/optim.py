"""Optax optimizers, learning-rate schedules and gradient clipping from an ``OptimConfig``.

The peak learning rate and the clip threshold are *state*, not constants
(``optax.inject_hyperparams``): a sweep vmaps ``tx.init`` over members with different values and
trains them all with one compiled program, and a single run is numerically the same program.
The chain is a named chain ``clip, direction, schedule, learning_rate`` followed by the
cell's own rules (``cells.ParamRule``: a param's learning-rate factor, a projection after the
update), so hyperparameters are found by name, never by position.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import optax

from rnn_spectra.config import OptimConfig
from rnn_spectra.errors import unknown_name



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


def project_singular_values(max_singular_value) -> optax.GradientTransformation:
    """Updates that land each (..., n, n) param at ``U min(S, max_singular_value) V^T`` (its SVD
    after the update): a projected step onto sigma_max <= bound. A param already inside keeps the
    plain update, so it picks up no SVD round-off. Works under vmap (batched SVD)."""

    def project(w):
        u, sv, vt = jnp.linalg.svd(w, full_matrices=False)
        clipped = jnp.einsum("...ij,...j,...jk->...ik", u, jnp.minimum(sv, max_singular_value), vt,
                             precision=jax.lax.Precision.HIGHEST)
        return jnp.where(sv[..., :1, None] > max_singular_value, clipped, w)

    def update(updates, state, params):
        if params is None:
            raise ValueError("project_singular_values needs the params")
        return jax.tree_util.tree_map(lambda p, u: project(p + u) - p, params, updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(cfg: OptimConfig, total_steps: int, *, rules: Sequence = (), seq_len: int = 1,
                   sv_bounds: dict | None = None,
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """``(tx, multiplier_schedule)``; clip first (on the raw gradient), then the optimizer, then
    one masked stage per cell rule (``cells.ParamRule``, applied to the params named
    ``rule.param`` only): ``lr_factor`` scales that param's update, ``abs_bound(seq_len)``
    projects it onto ``|p| <= bound``; then one per ``sv_bounds`` entry ``{param: bound}``
    (``control.max_singular_value``): the param's singular values clipped to ``<= bound``, the
    bound held as state (``max_singular_value``) so members with different bounds share a program."""
    schedule = make_schedule(cfg, total_steps)
    stages = [
        ("clip", make_clip(cfg.clip, cfg.clip_value)),
        ("direction", _direction(cfg)),
        ("schedule", optax.scale_by_schedule(schedule)),
        ("learning_rate",
         optax.inject_hyperparams(optax.scale_by_learning_rate)(learning_rate=cfg.learning_rate)),
    ]
    for rule in rules:
        if rule.lr_factor is not None:
            stages.append((f"lr_factor/{rule.param}",
                           optax.masked(optax.scale(rule.lr_factor(cfg)), _named(rule.param))))
        if rule.abs_bound is not None:
            stages.append((f"bound/{rule.param}",
                           optax.masked(project_abs(rule.abs_bound(seq_len)), _named(rule.param))))
    for param, bound in (sv_bounds or {}).items():
        stage = optax.inject_hyperparams(project_singular_values)(max_singular_value=bound)
        stages.append((f"sv_bound/{param}", optax.masked(stage, _named(param))))
    return optax.named_chain(*stages), schedule


def set_hyperparams(opt_state, *, learning_rate=None, clip_value=None):
    """A copy of ``opt_state`` with a new peak learning rate and/or clip threshold."""
    parts = dict(opt_state)
    if learning_rate is not None:
        lr = parts["learning_rate"]
        hp = dict(lr.hyperparams, learning_rate=jnp.asarray(learning_rate, jnp.float32))
        parts["learning_rate"] = lr._replace(hyperparams=hp)
    if clip_value is not None:
        clip = parts["clip"]
        (name,) = clip.hyperparams  # max_norm / max_delta / clipping, by clip kind
        parts["clip"] = clip._replace(hyperparams={name: jnp.asarray(clip_value, jnp.float32)})
    return type(opt_state)(parts)


def learning_rate(opt_state, schedule: optax.Schedule, step):
    """The learning rate applied at ``step``: peak (from the state) times the schedule."""
    return opt_state["learning_rate"].hyperparams["learning_rate"] * schedule(step)
