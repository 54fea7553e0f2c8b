"""When the training loop logs, evaluates, measures spectra, checkpoints and stops: one helper
(in the spirit of big_vision's ``itstime``) that ``loop.py`` asks after every step.
"""

from __future__ import annotations

import dataclasses

import jax

from rnn_spectra.checkpointing import Checkpointer
from rnn_spectra.config import RunConfig
from rnn_spectra.parallel import agree
from rnn_spectra.signals import SignalGuard


def itstime(step: int, every: int, total: int, last: bool = True) -> bool:
    """Whether a periodic event falls after ``step`` (1-based) of ``total``: every ``every``
    steps (0: never) and, with ``last``, after the last step (as big_vision's ``itstime``)."""
    return (every > 0 and step % every == 0) or (last and step == total)


@dataclasses.dataclass(frozen=True)
class Due:
    """What the loop does after one step. Rows come only at fixed steps (never at an
    interruption), so an interrupted and resumed run writes exactly the rows of an uninterrupted one."""

    log: bool
    eval: bool
    spectra: bool
    checkpoint: bool
    stop: bool  # a signal asked the loop to stop (agreed between processes)
    last: bool

    @property
    def reads_state(self) -> bool:
        return self.log or self.eval or self.spectra or self.checkpoint or self.stop


class Cadence:
    """When to log, evaluate, measure spectra, checkpoint and stop: the loop's one clock.

    Under several processes a signal or the checkpoint clock may reach them at different steps:
    they compare notes at log steps (one small all-gather) and act on the agreed flags; between
    log steps only the step-based checkpoint period, the same everywhere, counts."""

    def __init__(self, run: RunConfig, ckpt: Checkpointer, guard: SignalGuard):
        self.train, self.spectra_every = run.train, run.spectral.every
        self.ckpt, self.guard = ckpt, guard
        self.alone = jax.process_count() == 1

    def stopped_in_set_up(self) -> bool:
        """A signal before the first step (one process: there is nothing to agree on)."""
        return self.alone and self.guard.requested is not None

    def after(self, step: int) -> Due:
        tr = self.train
        log = itstime(step, tr.log_every, tr.steps)
        save, stop = self.ckpt.due(step), self.guard.requested is not None
        if not self.alone:
            save, stop = ((agree(save), agree(stop)) if log else
                          (itstime(step, self.ckpt.every_steps, tr.steps, last=False), False))
        return Due(log=log, eval=itstime(step, tr.eval_every, tr.steps),
                   spectra=self.spectra_every > 0 and itstime(step, self.spectra_every, tr.steps),
                   checkpoint=save, stop=stop, last=step == tr.steps)

    def stop_now(self, due: Due) -> bool:
        """After the step's writes: one process also stops for a signal that came during them."""
        return due.stop or (self.alone and self.guard.requested is not None)
