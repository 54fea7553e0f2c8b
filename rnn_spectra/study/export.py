"""The chosen members' own checkpoints: a study trains members stacked, in their group's
checkpoints; the report's chosen member of each row gets a copy (init and end) in its own
workdir, so ``rnn-spectra analyze``, ``load_run`` and the notebooks open it like a single run.

A copy is complete when the member holds every step its group's stacked checkpoints hold; one
that is not (the process was killed, the disk filled) is removed and made again, and ``load_run``
refuses a checkpoint older than the steps the run completed.
"""

from __future__ import annotations

import os
import shutil

import jax

from rnn_spectra import workdir as wd
from rnn_spectra.errors import Interrupted
from rnn_spectra.runs import load_run
from rnn_spectra.signals import SignalGuard
from rnn_spectra.sweep import export_member_checkpoints


def export_chosen_checkpoints(workdir: str) -> None:
    """The chosen setting's first seed of every row gets its own checkpoints (init and end), so
    `rnn-spectra analyze` and the notebooks can open it like a single run (one process only:
    the copies are plain single-device Orbax saves)."""
    from rnn_spectra.study.results import build_results

    export_best_checkpoints(workdir, [r["member_dirs"][0] for r in build_results(workdir)["rows"]])


def export_best_checkpoints(workdir: str, relpaths: list[str]) -> None:
    """Give the report's chosen members their own checkpoints (init and end) for analysis."""
    import jax.numpy as jnp

    from rnn_spectra.train import init_state

    by_group: dict[str, dict[int, str]] = {}
    for rel in relpaths:
        run = load_run(os.path.join(workdir, rel))
        sweep = run.summary["sweep"]
        group_dir = os.path.normpath(os.path.join(run.workdir, sweep["group_dir"]))
        if run.steps and run.steps == wd.checkpoint_steps(wd.path(group_dir, wd.CHECKPOINTS)):
            continue  # every stacked step was copied before
        if os.path.isdir(wd.path(run.workdir, wd.CHECKPOINTS)):  # a copy that did not finish
            shutil.rmtree(wd.path(run.workdir, wd.CHECKPOINTS))
        by_group.setdefault(group_dir, {})[sweep["index"]] = run
    # A stop asked for here lets the group being copied finish (Orbax's background commits
    # cut off mid-write leave tracebacks and temporary folders), then stops: exit 75.
    with SignalGuard() as guard:
        for group_dir, members in by_group.items():
            if guard.requested:
                raise Interrupted(f"{guard.requested} while copying the chosen members' "
                                  "checkpoints; run the same command to finish the copy")
            run = next(iter(members.values()))
            one = init_state(run.experiment, 0)
            template = jax.tree_util.tree_map(
                lambda x: jnp.stack([x] * run.summary["sweep"]["members"]), one)
            export_member_checkpoints(group_dir, template, {i: r.workdir for i, r in members.items()})
        if guard.requested:
            raise Interrupted(f"{guard.requested} after copying the chosen members' checkpoints; "
                              "run the same command to finish the study")
