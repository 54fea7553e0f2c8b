"""Optax optimizers, learning-rate schedules and gradient clipping from an ``OptimConfig``."""

from __future__ import annotations

import optax

from rnn_spectra.config import OptimConfig
from rnn_spectra.errors import unknown_name


def make_schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    lr, warm = cfg.learning_rate, min(cfg.warmup_steps, max(total_steps - 1, 0))
    if cfg.schedule == "constant":
        return optax.constant_schedule(lr)
    if cfg.schedule == "cosine":
        return optax.cosine_decay_schedule(lr, decay_steps=max(total_steps, 1))
    if cfg.schedule == "warmup_cosine":
        return optax.warmup_cosine_decay_schedule(0.0, lr, warm, max(total_steps, warm + 1))
    if cfg.schedule == "warmup_constant":
        return optax.join_schedules(
            [optax.linear_schedule(0.0, lr, max(warm, 1)), optax.constant_schedule(lr)], [warm]
        )
    raise unknown_name("learning-rate schedule", cfg.schedule,
                       ["constant", "cosine", "warmup_cosine", "warmup_constant"])


def make_clip(cfg: OptimConfig) -> optax.GradientTransformation:
    """none | global_norm (Pascanu et al. 2013) | value (element-wise, uRNN) | agc (Brock 2021)."""
    if cfg.clip == "none":
        return optax.identity()
    if cfg.clip == "global_norm":
        return optax.clip_by_global_norm(cfg.clip_value)
    if cfg.clip == "value":
        return optax.clip(cfg.clip_value)
    if cfg.clip == "agc":
        return optax.adaptive_grad_clip(cfg.clip_value)
    raise unknown_name("clipping", cfg.clip, ["none", "global_norm", "value", "agc"])


def make_optimizer(cfg: OptimConfig, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Clip first (on the raw gradient), then the optimizer with its schedule."""
    schedule = make_schedule(cfg, total_steps)
    if cfg.name == "adam":
        opt = optax.adam(schedule)
    elif cfg.name == "rmsprop":
        opt = optax.rmsprop(schedule, decay=cfg.rmsprop_decay)
    elif cfg.name == "sgd":
        opt = optax.sgd(schedule, momentum=cfg.momentum or None)
    else:
        raise unknown_name("optimizer", cfg.name, ["adam", "rmsprop", "sgd"])
    return optax.chain(make_clip(cfg), opt), schedule
