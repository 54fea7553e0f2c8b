"""Workdir admission: who may write a workdir, where the members' checkpoints live, and what may
change when a run is continued. ``loop.py`` calls these before it trains and while it trains.

The loop trains S >= 1 stacked members the same way whatever S is; what a single run and a sweep
group do differently is here, side by side: ``RunWorkdir`` (a single run: its own workdir holds
its checkpoints, its state alone, and is admitted here) and ``GroupWorkdir`` (a study's group:
the group's directory holds the stacked checkpoints; the study admits the members).

A killed or preempted run loses at most the steps since its last checkpoint and continues exactly
(same batches, same params) when started again with a config that differs only in
``RESUMABLE_KEYS``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys

import jax
import ml_collections

from rnn_spectra import config as config_lib
from rnn_spectra import control
from rnn_spectra import workdir as wd
from rnn_spectra.errors import ConfigError, WorkdirError
from rnn_spectra.optim import make_schedule
from rnn_spectra.parallel import run_layout, sweep_layout
from rnn_spectra.sweep import member

# Keys that may change when a run is continued: they extend it or change only its bookkeeping.
RESUMABLE_KEYS = ("train.steps", "train.progress", "train.log_every", "train.eval_every",
                  "spectral.every", "checkpoint.every_steps", "checkpoint.every_minutes",
                  "checkpoint.keep", "parallel.mode", "parallel.num_devices", "model.unroll",
                  "log.tensorboard", "log.wandb", "log.wandb_project", "log.wandb_entity",
                  "log.wandb_mode", "control.lyapunov.until")


class WorkdirLock:
    """An exclusive flock on WORKDIR/.lock; a second process on the same workdir is refused.

    flock directly, not ``filelock`` (which ``workdir.update_json`` uses for its short critical
    sections): the refusal names the holder's PID, which the holder writes into the lock file
    once it has the lock. filelock (its UnixFileLock is the same flock, released when the
    process dies) gives no supported way to write or read that file, and across the versions we
    allow (>= 3.12) it differs in what it does to it: 3.x opens it with O_TRUNC before trying the
    lock, so a refused second process would erase the holder's PID; 4.x by default falls back to
    a soft lock (a marker file, which the kernel does not release) on a file system without flock.
    """

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, ".lock")
        self.fd = None
        self.busy = False  # refused: another process holds it

    def __enter__(self):
        created = not os.path.lexists(self.path)
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise wd.io_error(self.path, "open", e, "check permissions") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 32, 0).decode(errors="replace").strip() or "another process"
            os.close(self.fd)
            self.busy = True
            raise WorkdirError(
                f"workdir {os.path.dirname(self.path)} is in use by pid {holder}; "
                "wait for it to finish or use another --workdir"
            ) from None
        try:
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, str(os.getpid()).encode(), 0)
        except OSError as e:  # a full disk: leave no empty lock file behind
            os.close(self.fd)  # releases the flock
            if created:
                with contextlib.suppress(OSError):
                    os.remove(self.path)
            raise wd.io_error(self.path, "write the workdir lock", e, "check permissions") from None
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def config_differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts."""
    diffs = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += config_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            diffs.append(f"{prefix}{key}")
    return diffs


def prepare_workdir(w: str) -> None:
    """Create ``w`` if needed; refuse a file, a foreign non-empty folder or a read-only one."""
    if os.path.exists(w) and not os.path.isdir(w):
        raise WorkdirError(f"workdir {w} exists and is not a directory; pick another --workdir")
    if os.path.isdir(w) and os.listdir(w) and not wd.is_run(w):
        # A run killed during its first second may leave only these behind; it is still ours.
        allowed = {".lock", *wd.stale_temp_files(w)}
        if set(os.listdir(w)) - allowed:
            raise WorkdirError(
                f"{w} is not empty and is not a run (no {wd.CONFIG}); pick a new or empty --workdir"
            )
    wd.make_dir(w, "the workdir")
    if not os.access(w, os.W_OK):
        raise WorkdirError(f"workdir {w} is not writable; check its permissions")


def existing_run(w: str, config: ml_collections.ConfigDict) -> tuple[dict | None, dict | None]:
    """Refuse a different config; return the old (config, summary), or Nones for a new run."""
    if not wd.is_run(w):
        return None, None
    old = wd.read_json(wd.path(w, wd.CONFIG))
    if not isinstance(old, dict):
        raise WorkdirError(f"{wd.path(w, wd.CONFIG)} is damaged (not a JSON object); "
                           "restore it or use a new --workdir")
    new = config.to_dict()
    defaults = config_lib.default_config().to_dict()
    # A key added to the code after this run started, at its default, is no change: the run's
    # config simply predates it. Anything else outside RESUMABLE_KEYS is refused.
    diffs = [d for d in config_differences(old, new) if d not in RESUMABLE_KEYS
             and not (_missing(old, d) and _get(new, d) == _get(defaults, d))]
    if diffs:
        shown = ", ".join(f"{d} ({_get(old, d)!r} -> {_get(new, d)!r})" for d in diffs[:4])
        raise ConfigError(
            f"workdir {w} holds a run with a different config: {shown}; use a new --workdir "
            f"(only {', '.join(RESUMABLE_KEYS)} may change on resume)"
        )
    summary_path = wd.path(w, wd.SUMMARY)
    summary = wd.read_json(summary_path, hint="delete it to resume from the checkpoints") \
        if os.path.lexists(summary_path) else None
    if summary is not None and not isinstance(summary, dict):
        raise WorkdirError(f"{summary_path} is damaged; delete it to resume from the checkpoints")
    if summary and summary.get("status") == "diverged":
        refuse_diverged(w, summary.get("diverged_step"), summary.get("last_good_step"))
    return old, summary


def refuse_diverged(w: str, diverged_step, last_good_step) -> None:
    raise WorkdirError(
        f"the run in {w} diverged at step {diverged_step} (its last good checkpoint, step "
        f"{last_good_step}, is kept in {wd.path(w, wd.CHECKPOINTS)}); resuming would diverge "
        "again: change the config and use a new --workdir"
    )


def check_schedule(w: str, run, schedule, old_config: dict | None, start: int) -> None:
    """Refuse a train.steps change that would rewrite the learning rates of done steps, and a
    control.lyapunov.until change that would rewrite which done steps were regularised."""
    control.check_resume(w, run, old_config, start)
    old_steps = _get(old_config or {}, "train.steps")
    if start == 0 or not isinstance(old_steps, int) or old_steps == run.train.steps:
        return
    steps = jax.numpy.arange(start)
    old = make_schedule(run.optim, old_steps)(steps)
    if not bool(jax.numpy.array_equal(old, schedule(steps))):
        raise ConfigError(
            f"train.steps {old_steps} -> {run.train.steps} changes the {run.optim.schedule!r} "
            f"learning-rate schedule of the {start} steps {w} has already trained; "
            "resume with the same train.steps, or start a new --workdir"
        )


def _missing(d: dict, dotted: str) -> bool:
    *parents, leaf = dotted.split(".")
    for part in parents:
        d = d.get(part) if isinstance(d, dict) else None
    return not isinstance(d, dict) or leaf not in d


def _get(d: dict, dotted: str):
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


def remove_unstarted_workdir(w: str) -> None:
    """Remove a workdir this process created if it holds no run yet (only the lock or temp
    files): a failure before config.json was written leaves nothing behind."""
    try:
        if wd.is_run(w) or not os.path.isdir(w):
            return
        leftovers = set(os.listdir(w))
        if leftovers - {".lock", *wd.stale_temp_files(w)}:
            return
        for name in leftovers:
            os.remove(os.path.join(w, name))
        os.rmdir(w)
    except OSError:
        pass


class RunWorkdir:
    """A single run (S = 1): its workdir holds its checkpoints (its state alone, as ``load_run``
    reads them, ranked by eval loss) and is admitted here: a foreign folder, another config, a
    diverged run or a schedule that would rewrite done steps is refused; a finished one returned."""

    test_chunks = 0  # a single run's summary has test numbers only when asked for them
    save_initial = False

    def __init__(self, workdir: str):
        self.directory = workdir
        self.name = os.path.basename(workdir.rstrip("/"))
        self.what = "this config"
        self.old_config = self.old_summary = None

    def layout(self, run):
        return run_layout(run.parallel, run.train.batch_size)

    def prepare(self) -> None:
        prepare_workdir(self.directory)

    def admit(self, config: ml_collections.ConfigDict, writer: bool) -> None:
        """Compare ``config`` with the run the workdir holds; claim a new workdir at once."""
        w = self.directory
        if writer:
            wd.remove_stale_temp_files(w)
        self.old_config, self.old_summary = existing_run(w, config)
        if self.old_config is None and writer:
            # Before anything else lands in the workdir: a run killed from here on resumes.
            wd.write_json(wd.path(w, wd.CONFIG), config.to_dict())

    def admit_start(self, run, schedule, start: int, diverged_at, writer: bool) -> list[dict] | None:
        """Check the restored ``start`` step; the old summary of a run with nothing left to train."""
        w = self.directory
        if diverged_at[0] >= 0:  # even if summary.json was never written
            refuse_diverged(w, int(diverged_at[0]), start)
        if self.old_summary and self.old_summary.get("status") == "completed" and start >= run.train.steps:
            print(f"{w}: already completed {start} steps (raise --config.train.steps to extend)",
                  file=sys.stderr)
            return [self.old_summary]
        if start > run.train.steps:
            raise ConfigError(f"{w} is at step {start}, beyond train.steps={run.train.steps}; "
                              f"resume with --config.train.steps={start} or more")
        check_schedule(w, run, schedule, self.old_config, start)
        if start and writer:
            print(f"resuming {w} from step {start}", file=sys.stderr)
        return None

    def to_checkpoint(self, state, stacking):
        return member(state, 0)

    def from_checkpoint(self, state, stacking):
        return stacking.from_one(state)

    def best_meta(self, best: list):
        return best[0]

    def best_from_meta(self, saved) -> list:
        # A list: exported from a group before export wrote each member's own best.
        return [None if isinstance(saved, list) else saved]

    def rank(self, eval_losses) -> dict | None:
        """Orbax keeps the best checkpoint by this (only at evaluated steps)."""
        return None if eval_losses is None else {"eval_loss": float(eval_losses[0])}

    def checkpoints(self, index: int, workdir: str, steps: list[int]) -> dict:
        return {"checkpoint_steps": steps}


class GroupWorkdir:
    """A sweep group, a study's unit of S >= 1 members: ``group_dir`` holds their stacked
    checkpoints, step 0 included (each member's initial params can be exported for analysis,
    ``sweep.export_member_checkpoints``); the study admits the members (``study/members.py``)."""

    test_chunks = 4  # test set = test_chunks x eval_batches x eval_batch_size: a study's numbers
    save_initial = True

    def __init__(self, group_dir: str, members: int, name: str | None = None):
        self.directory, self.n = group_dir, members
        self.name = name or "sweep"
        self.what = f"sweep group {self.name}"

    def layout(self, run):
        return sweep_layout(run.parallel, run.train.batch_size)

    def prepare(self) -> None:
        os.makedirs(self.directory, exist_ok=True)

    def admit(self, config, writer: bool) -> None:
        pass

    def admit_start(self, run, schedule, start, diverged_at, writer) -> None:
        return None

    def to_checkpoint(self, state, stacking):
        return stacking.unpadded(state)

    def from_checkpoint(self, state, stacking):
        return stacking.padded(state)

    def best_meta(self, best: list):
        return best

    def best_from_meta(self, saved) -> list:
        return saved if isinstance(saved, list) else [None] * self.n

    def rank(self, eval_losses) -> None:
        return None  # no one loss ranks a group

    def checkpoints(self, index: int, workdir: str, steps: list[int]) -> dict:
        # relative, so a study directory can be moved or copied whole
        return {"sweep": {"group": self.name, "index": index, "members": self.n,
                          "group_dir": os.path.relpath(self.directory, workdir)}}
