"""Progress on stderr that tells the truth: a run's bar and a study's bar.

The loop tells a ``Progress`` four things (``loop.Loop._train``): ``compiling`` before the first
step (which compiles the program, and the step-0 spectrum its monitor), ``tick`` after every
step with the host's step counter (a Python int: reading it costs no device sync; the host runs
ahead of the device by at most ``train.log_every`` steps, where the metrics pull waits),
the ``__call__`` at log steps with the metrics, and ``finish`` when it stops. The bars move on
``tick`` at most every ``REFRESH_S`` seconds, so their ETA follows the steps as they go rather
than jumping every ``log_every`` steps, and the compile time is said, not averaged into the rate.

A plain callable ``(name, step, steps, info)`` is still a progress (tests and scripts pass one);
``as_progress`` wraps it. The bars use tqdm's ``disable=None``: off when stderr is not a TTY.
"""

from __future__ import annotations

import math
import sys
import time

REFRESH_S = 0.5  # bars move at most this often (tqdm redraws at most every mininterval anyway)
COMPILING = "compiling…"


class Progress:
    """What the training loop reports; every method does nothing unless overridden."""

    def compiling(self, name: str, start: int, steps: int) -> None:
        """Before the first step of this session (from step ``start`` of ``steps``)."""

    def tick(self, step: int) -> None:
        """After every step; cheap (called at every step)."""

    def __call__(self, name: str, step: int, steps: int, info: dict) -> None:
        """At a log step: ``info`` holds loss, grad_norm (member 0), best_loss (over the running
        members), members, running, diverged."""

    def finish(self, step: int) -> None:
        """The loop has stopped at ``step``."""


class _Callback(Progress):
    def __init__(self, fn):
        self.fn = fn

    def __call__(self, name, step, steps, info) -> None:
        self.fn(name, step, steps, info)


def as_progress(progress) -> Progress | None:
    """A ``Progress`` as it is, a plain callable wrapped, None as None."""
    if progress is None or isinstance(progress, Progress):
        return progress
    return _Callback(progress)


def _tqdm(**kwargs):
    from tqdm.auto import tqdm

    return tqdm(**kwargs)


class RunBar(Progress):
    """One run's (or sweep group's) bar: ``<desc>: compiling…`` until the first step returns,
    then steps with an ETA from the steps since (the compile time is not in the rate), and
    member 0's loss and grad norm from the last log step."""

    def __init__(self, desc: str, *, file=None, disable: bool | None = None, clock=time.monotonic):
        self.desc, self.file, self.disable, self.clock = desc, file or sys.stderr, disable, clock
        self.bar, self.waiting, self.last = None, False, -math.inf

    def compiling(self, name, start, steps) -> None:
        self.bar = _tqdm(total=steps, initial=start, file=self.file, dynamic_ncols=True,
                         desc=f"{self.desc}: {COMPILING}", leave=False, disable=self.disable,
                         smoothing=0)  # the average rate since the compile: steps cost the same
        self.waiting = True

    def tick(self, step) -> None:
        if self.bar is None:
            return
        now = self.clock()
        if self.waiting:  # the first step has returned: its compile is done
            self.waiting = False
            self.bar.unpause()  # tqdm's clock restarts here: the compile is not in the rate
            self.bar.set_description(self.desc, refresh=False)
        elif now - self.last < REFRESH_S:
            return
        self.last = now
        self.bar.update(step - self.bar.n)

    def __call__(self, name, step, steps, info) -> None:
        if self.bar is None:
            return
        self.bar.set_postfix(loss=f"{info['loss']:.4g}", grad_norm=f"{info['grad_norm']:.3g}",
                             refresh=False)
        self.bar.update(step - self.bar.n)

    def finish(self, step) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class StudyBar(Progress):
    """One bar for a whole study on stderr, and one line per group.

    The bar's unit is work, members x steps x T x H^2 (a group's ``cost``), so its ETA holds
    across groups of different sizes; it counts the work this session does (a skipped group, or
    the part of a resumed one already done, leaves the total). A phase's groups join the total
    when the phase starts: the extension and the confirmation follow from the pilot's results,
    so the ETA is for the phases known so far. The postfix shows the group, its step, the best
    (lowest) train loss its members reached so far in this session (never rising; reset per
    group, whose tasks differ), and how many members run or diverged; a line names each group
    as it starts and gives its step, time, best loss and divergences when it stops. ``quiet``: nothing at all
    (the processes but the first of a multi-process study); ``bar=False``: the lines only (a
    worker process, whose parent draws the bar).
    """

    def __init__(self, *, file=None, disable: bool | None = None, quiet: bool = False,
                 bar: bool = True, clock=time.monotonic):
        self.file, self.quiet, self.clock = file or sys.stderr, quiet, clock
        self.draw, self.disable, self.bar = bar and not quiet, disable, None
        self.total, self.index, self.groups = 0.0, 0, 0
        self.name, self.cost, self.weight, self.step, self.best = "", 0.0, 0.0, 0, math.inf
        self.steps, self.group_t0, self.last = 0, 0.0, -math.inf
        self.running = self.members = self.diverged = 0

    # ------------------------------------------------------------- what the study says
    def line(self, text: str) -> None:
        """A line above the bar (or alone, without one)."""
        if self.quiet:
            return
        if self.bar is not None and not self.bar.disable:
            self.bar.write(text, file=self.file)
        else:
            print(text, file=self.file, flush=True)

    def add_phase(self, label: str, groups: int, cost: float) -> None:
        """A phase of ``groups`` groups and ``cost`` work starts: numbered [1/groups] on."""
        self.index, self.groups = 0, groups
        if self.draw and self.bar is None:  # made here: tqdm has no ETA for a total of 0
            self.bar = _tqdm(
                total=cost, file=self.file, dynamic_ncols=True, desc=label, disable=self.disable,
                smoothing=0,  # the rate since the start: compiles and evals count, as they recur
                bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}{postfix}]")
        elif self.bar is not None:
            self.bar.set_description(label, refresh=False)
        self._total(self.total + cost)

    def start(self, name: str, members: int, cost: float = 0.0) -> None:
        """A group starts (``cost``: its work, all of its steps)."""
        self.index += 1
        self.name, self.cost, self.members, self.running, self.diverged = name, cost, members, members, 0
        self.best, self.step, self.weight, self.group_t0 = math.inf, 0, 0.0, self.clock()
        self.line(f"[{self.index}/{self.groups}] {name}: {members} members in one program")

    def skip(self, name: str, members: int, cost: float = 0.0) -> None:
        """A finished group, not trained again: its work leaves the total."""
        self.index += 1
        self._total(self.total - cost)
        self.line(f"[{self.index}/{self.groups}] {name} (done, skipped): {members} members")

    def done(self, cost: float, trained: bool = True) -> None:
        """A group trained elsewhere (a worker process) has finished; one found finished
        before (``trained=False``) leaves the total instead."""
        if trained:
            self._advance(cost)
        else:
            self._total(self.total - cost)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    # ------------------------------------------------------------- what the loop says
    def compiling(self, name, start, steps) -> None:
        self.weight = self.cost / steps if steps else 0.0
        self.step, self.steps = start, steps
        self._total(self.total - start * self.weight)  # done in an earlier session
        self._postfix(COMPILING)

    def tick(self, step) -> None:
        self._to(step)

    def __call__(self, name, step, steps, info) -> None:
        if math.isfinite(info.get("best_loss", math.nan)):
            self.best = min(self.best, float(info["best_loss"]))
        self.running, self.diverged = info["running"], info["diverged"]
        self._to(step, force=True)

    def finish(self, step) -> None:
        """The group stopped: its line, and the work it did not do (diverged, stopped) leaves."""
        self._to(step, force=True)
        self._total(self.total - (self.steps - step) * self.weight)
        spent = self.clock() - self.group_t0
        best = f"{self.best:.4g}" if math.isfinite(self.best) else "-"
        self.line(f"  {self.name}: step {step}/{self.steps} in {spent:.0f}s, best loss {best}, "
                  f"diverged {self.diverged}/{self.members}")

    # ------------------------------------------------------------- the bar
    def _to(self, step: int, force: bool = False) -> None:
        now = self.clock()
        if not force and now - self.last < REFRESH_S:
            return
        self.last = now
        self._postfix(f"step {step}/{self.steps}")  # before the update draws the bar
        self._advance((step - self.step) * self.weight)
        self.step = step

    def _advance(self, work: float) -> None:
        if self.bar is not None and work:
            self.bar.update(work)

    def _total(self, total: float) -> None:
        self.total = max(total, 0.0)
        if self.bar is not None:
            self.bar.total = self.total
            self.bar.refresh()

    def _postfix(self, where: str) -> None:
        if self.bar is None:
            return
        best = f"{self.best:.4g}" if math.isfinite(self.best) else "-"
        # the group's name is on the line above: the bar keeps its width
        self.bar.set_postfix_str(f"group {self.index}/{self.groups} {where}, best loss {best}, "
                                 f"running {self.running}/{self.members}, diverged {self.diverged}",
                                 refresh=False)
