"""Sweeps that compile once: which member configs can share one program, and their stacking.

Seeds, recurrent init schemes, learning rates and clip thresholds (with "none" as an infinite
global-norm threshold) do not change shapes, so members that differ only in those are stacked
along a leading axis and trained by ``jax.vmap`` of the single-run train step (``loop.Loop``):
one compile per (task, T, architecture, hidden size, optimizer family) instead of one per member.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from rnn_spectra import workdir as wd
from rnn_spectra.cells import program_name
from rnn_spectra.checkpointing import Checkpointer
from rnn_spectra.config import RunConfig


def program_signature(run: RunConfig) -> RunConfig:
    """The config with every vmappable field blanked: members with equal signatures share a program."""
    clip = "global_norm" if run.optim.clip == "none" else run.optim.clip
    return dataclasses.replace(
        run,
        seed=0,
        model=dataclasses.replace(run.model, cell=program_name(run.model.cell),
                                  recurrent_init=None, init_scale=None),
        optim=dataclasses.replace(run.optim, learning_rate=0.0, clip=clip, clip_value=0.0),
        checkpoint=dataclasses.replace(run.checkpoint, keep=0),
    )


def group_by_program(runs: Sequence[RunConfig]) -> list[list[int]]:
    """Indices of ``runs`` grouped by program signature, in first-seen order."""
    groups: dict[RunConfig, list[int]] = {}
    for i, run in enumerate(runs):
        groups.setdefault(program_signature(run), []).append(i)
    return list(groups.values())


def stack(trees):
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *trees)


def member(tree, i: int):
    return jax.tree_util.tree_map(lambda x: x[i], tree)


def export_member_checkpoints(group_dir: str, template_state, members: dict[int, str]) -> None:
    """Copy members ``{index: workdir}`` of the group's stacked checkpoints into their own
    workdirs, so ``rnn-spectra analyze`` and the notebooks load them like any single run.
    Each stacked step is restored once, whatever the number of members exported."""
    src = Checkpointer(os.path.join(group_dir, wd.CHECKPOINTS), keep=1000)
    dst = {i: Checkpointer(wd.path(w, wd.CHECKPOINTS), keep=1000) for i, w in members.items()}
    try:
        for s in src.steps():
            stacked, meta = src.restore(template_state, step=s)
            for i, ckpt in dst.items():
                ckpt.save(s, member(stacked, i), meta)
    finally:
        for ckpt in [src, *dst.values()]:
            ckpt.close()
