"""Sweeps that compile once: which member configs can share one program, and their stacking.

Seeds, recurrent init schemes, learning rates, clip thresholds (with "none" as an infinite
global-norm threshold) and the values of the control settings held as state do not change shapes, so members that differ only in those are stacked
along a leading axis and trained by ``jax.vmap`` of the single-run train step (``loop.Loop``):
one compile per (task, T, architecture, hidden size, optimizer family) instead of one per member.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rnn_spectra import workdir as wd
from rnn_spectra.cells import program_name
from rnn_spectra.checkpointing import Checkpointer
from rnn_spectra.config import RunConfig
from rnn_spectra.errors import ConfigError
from rnn_spectra.parallel import padded_size


def program_signature(run: RunConfig) -> RunConfig:
    """The config with every vmappable field blanked (set to one valid value, a section checks
    its values): members with equal signatures share a program. The regulariser's weight and
    target and the projection bound are state (``control.py``) once they are on, so only on/off
    is part of the program."""
    clip = "global_norm" if run.optim.clip == "none" else run.optim.clip
    ctl, lc = run.control, run.control.lyapunov
    lc = dataclasses.replace(lc, weight=float(lc.weight > 0), target=0.0)
    ctl = dataclasses.replace(ctl, lyapunov=lc, max_singular_value=float(ctl.max_singular_value > 0))
    return dataclasses.replace(
        run,
        seed=0,
        model=dataclasses.replace(run.model, cell=program_name(run.model.cell),
                                  recurrent_init=None, init_scale=None),
        optim=dataclasses.replace(run.optim, learning_rate=1.0, clip=clip, clip_value=1.0),
        checkpoint=dataclasses.replace(run.checkpoint, keep=1),
        control=ctl,
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


class Stacking:
    """The member axis of S >= 1 members on their layout: in ``sweep`` mode sharded over the
    devices (parallel.py) and padded with copies of member 0 to a multiple of the device count.
    Padding is computed, never written or checkpointed."""

    def __init__(self, layout, members: int):
        self.layout, self.n = layout, members
        self.n_pad = padded_size(members, layout)
        self._unpad_fn = None

    def map(self, fn, in_axes=0):
        """``fn`` over the member axis: ``jax.vmap``. One member (a single run) runs ``fn`` itself on
        its squeezed arrays: the program of one run without vmap, whose numbers a vmap over one
        member can round differently (a ReLU run's gradient flow by ~1e-7)."""
        if self.n_pad > 1:
            return jax.vmap(fn, in_axes=in_axes)
        axes = in_axes if isinstance(in_axes, (tuple, list)) else None

        def one(*args):
            args = [a if axes is not None and axes[i] is None else member(a, 0)
                    for i, a in enumerate(args)]
            return jax.tree_util.tree_map(lambda y: y[None], fn(*args))

        return one

    def put(self, values: np.ndarray):
        """A per-member host array, padded and placed."""
        pad = np.concatenate([values, np.repeat(values[:1], self.n_pad - self.n, axis=0)])
        return self.layout.put(pad, self.layout.stacked)

    def stack(self, states: list, name: str = "sweep"):
        """Each member exactly the state it would start from alone, stacked and placed."""
        if len({jax.tree_util.tree_structure(s) for s in states}) != 1:
            raise ConfigError(f"sweep group {name}: member states differ in structure "
                              "(mixing clip kinds other than none/global_norm?)")
        return self.layout.put(stack(states + states[:1] * (self.n_pad - self.n)), self.layout.stacked)

    def from_one(self, state):
        """One member's state (a single run's checkpoint) as the stacked state on the layout."""
        return jax.jit(lambda t: jax.tree_util.tree_map(lambda x: x[None], t),
                       out_shardings=self.layout.stacked)(state)

    def unpadded(self, state):
        """The real members only (what a checkpoint holds, whatever the device count)."""
        if self.n_pad == self.n:
            return state
        if self._unpad_fn is None:  # one compile per group, not per checkpoint
            self._unpad_fn = jax.jit(lambda t: jax.tree_util.tree_map(lambda x: x[:self.n], t),
                                     out_shardings=self.layout.replicated)
        return self._unpad_fn(state)

    def padded(self, state):
        """Members back to the padded, sharded layout (copies of member 0 at the end)."""
        if self.n_pad == self.n:
            return state
        extra = self.n_pad - self.n
        return jax.jit(lambda t: jax.tree_util.tree_map(
            lambda x: jnp.concatenate([x, jnp.repeat(x[:1], extra, axis=0)]), t),
            out_shardings=self.layout.stacked)(state)


def export_member_checkpoints(group_dir: str, template_state, members: dict[int, str]) -> None:
    """Copy members ``{index: workdir}`` of the group's stacked checkpoints into their own
    workdirs, so ``rnn-spectra analyze`` and the notebooks load them like any single run.
    Each stacked step is restored once, whatever the number of members exported."""
    src = Checkpointer(os.path.join(group_dir, wd.CHECKPOINTS), keep=1000)
    dst = {i: Checkpointer(wd.path(w, wd.CHECKPOINTS), keep=1000) for i, w in members.items()}
    try:
        for s in src.steps():
            stacked, meta = src.restore(template_state, step=s)
            best = meta.get("best_eval_loss")
            for i, ckpt in dst.items():  # a single run's meta: its own best, not the group's list
                ckpt.save(s, member(stacked, i),
                          {**meta, "best_eval_loss": best[i] if isinstance(best, list) else best})
    finally:
        for ckpt in [src, *dst.values()]:
            ckpt.close()
