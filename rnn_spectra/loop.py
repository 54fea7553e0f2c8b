"""THE host loop: trains S >= 1 members that share one compiled program; a single run is S = 1.

``train.py`` holds the pure, jittable pieces; this loop drives them and owns everything that
touches files: the cadence (``Cadence``: when to log, eval, measure spectra, checkpoint, stop),
divergence (a member whose loss or gradient turns non-finite is frozen by the train step and
recorded as ``diverged``; the others go on), resume, signals and the summaries (``summary.py``).

Whatever S is, the members are stacked along a leading axis (``sweep.Stacking``) and every one
writes an ordinary workdir, so everything downstream reads it like a single run. Where their
checkpoints live, and who admits the workdirs, is the one difference between a single run and a
sweep group (``resume.RunWorkdir``: the run's own workdir; ``resume.GroupWorkdir``: the group's).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import sys
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from rnn_spectra import config as config_lib
from rnn_spectra import control, log_backends, resume
from rnn_spectra import summary as summary_lib
from rnn_spectra import workdir as wd
from rnn_spectra.cadence import Cadence
from rnn_spectra.checkpointing import Checkpointer
from rnn_spectra.config import RunConfig
from rnn_spectra.errors import ConfigError, StorageError, WorkdirError
from rnn_spectra.memory import check_fits
from rnn_spectra.model import count_params
from rnn_spectra.parallel import is_writer, to_host
from rnn_spectra.progress import Progress, RunBar, as_progress
from rnn_spectra.rng import EVAL_STREAM, TEST_STREAM
from rnn_spectra.signals import SignalGuard
from rnn_spectra.spectral.monitor import SpectralMonitor
from rnn_spectra.sweep import Stacking, member, program_signature
from rnn_spectra.tasks import Task
from rnn_spectra.train import (
    Experiment,
    build,
    evaluate,
    init_state,
    make_eval_fn,
    make_train_step,
)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Train one run into ``workdir`` (resuming it if it holds a checkpoint); returns summary.json."""
    return Loop([config], [workdir]).run()[0]


# ----------------------------------------------------------------------------- members
@dataclasses.dataclass
class Member:
    """One member: its config as given (config.json), resolved and built, its workdir, and what
    the loop has seen of it."""

    config: ml_collections.ConfigDict
    workdir: str
    run: RunConfig
    exp: Experiment
    diverged_step: int | None = None  # 1-based, once the train step has recorded it
    best_eval_loss: float = math.inf


class Loop:
    """``Loop(configs, workdirs, group_dir=None).run() -> [summary per member]``.

    Without ``group_dir`` one config trains as a single run in its own workdir; with it, the
    members train as a sweep group whose stacked checkpoints live in ``group_dir``. ``task``: the
    members' task, already built (``train.build``)."""

    def __init__(self, configs: Sequence[ml_collections.ConfigDict], workdirs: Sequence[str],
                 group_dir: str | None = None, *, name: str | None = None, test_chunks: int | None = None,
                 task: Task | None = None):
        if len(configs) != len(workdirs) or not configs:
            raise ValueError("need one workdir per member config, and at least one member")
        if group_dir is None and len(configs) != 1:
            raise ValueError("several members train as a sweep: give a group_dir for their checkpoints")
        self.home = (resume.RunWorkdir(workdirs[0]) if group_dir is None
                     else resume.GroupWorkdir(group_dir, len(configs), name))
        self.name = name or self.home.name
        runs = [config_lib.resolve(c) for c in configs]
        if len({program_signature(r) for r in runs}) != 1:
            raise ConfigError(f"sweep group {self.name}: members differ in more than seed, init, "
                              "learning rate and clip threshold; split them with group_by_program")
        # The members differ in seed, init, learning rate and clip threshold, never in the task:
        # they share one built task (``task``, if given: a study's groups on one table share it).
        first = build(runs[0], task)
        exps = [first] + [build(r, first.task) for r in runs[1:]]
        self.members = [Member(*m) for m in zip(configs, workdirs, runs, exps)]
        # The settings every member shares (program, cadence, layout): the first member's.
        self.n, self.common, self.exp = len(runs), runs[0], self.members[0].exp
        self.test_chunks = self.home.test_chunks if test_chunks is None else test_chunks
        self.layout = self.home.layout(self.common)
        self.stacking = Stacking(self.layout, self.n)
        self.seeds = self.stacking.put(np.asarray([r.seed for r in runs], np.int32))
        # Before anything is written: a config too large for the device is one line, not a
        # RESOURCE_EXHAUSTED traceback after config.json already claimed the workdir.
        check_fits(self.exp, self.n, self.layout, what=self.home.what)
        # Under several processes all of them train; only process 0 touches the workdirs' files
        # (Orbax writes the checkpoints collectively).
        self.writer = is_writer()
        self.loggers = []
        self.grouped = group_dir is not None
        log_backends.require(self.common.log)  # before anything is written

    # ------------------------------------------------------------------ set-up
    def run(self, progress: Progress | Callable | None = None) -> list[dict]:
        home, lock = self.home, None
        new = not os.path.lexists(home.directory)
        try:
            home.prepare()
            lock = resume.WorkdirLock(home.directory) if self.writer else contextlib.nullcontext()
            with lock, SignalGuard() as guard, control.lapack_threads(self.common):
                home.admit(self.members[0].config, self.writer)
                c = self.common.checkpoint
                ckpt = Checkpointer(os.path.join(home.directory, wd.CHECKPOINTS), keep=c.keep,
                                    every_steps=c.every_steps, every_minutes=c.every_minutes)
                try:
                    return self._train(Cadence(self.common, ckpt, guard), ckpt, progress)
                except StorageError as e:  # a full disk: stop here, say so in every summary.json
                    if self.writer:
                        self._write_failure(ckpt.good_steps(), e)
                    raise
                finally:
                    ckpt.close()  # waits for the async save on every exit path
                    for logger in self.loggers:
                        logger.close()
        except BaseException:
            # e.g. a full disk or a signal during set-up; never a directory another process holds
            if new and self.writer and not getattr(lock, "busy", False):
                resume.remove_unstarted_workdir(home.directory)
            raise

    def _start(self, ckpt: Checkpointer):
        """(stacked state, start step, wall time so far): initial, or the latest checkpoint's."""
        states = [init_state(m.exp, m.run.seed) for m in self.members]
        state, elapsed = self.stacking.stack(states, self.name), 0.0
        if ckpt.steps():  # a restore lands in the layout of the template
            restored, meta = ckpt.restore(self.home.to_checkpoint(state, self.stacking))
            state = self.home.from_checkpoint(restored, self.stacking)
            elapsed = float(meta.get("wall_time_s") or 0.0)
            # None until the first finite eval: JSON has no inf.
            for m, b in zip(self.members, self.home.best_from_meta(meta.get("best_eval_loss"))):
                m.best_eval_loss = math.inf if b is None else float(b)
        return state, int(self._host(state["step"])[0]), elapsed

    def _claim(self, start: int) -> None:
        """Write every member's config; drop rows past ``start`` (never checkpointed; written
        again). A start at step 0 measures the step-0 spectrum again: drop an old one."""
        for m in self.members if self.writer else ():
            os.makedirs(m.workdir, exist_ok=True)
            wd.truncate_jsonl(wd.path(m.workdir, wd.METRICS), start)
            wd.truncate_jsonl(wd.path(m.workdir, wd.SPECTRA), start if start else -1)
            wd.write_json(wd.path(m.workdir, wd.CONFIG), m.config.to_dict())

    def _compile(self):
        """(train_step, eval_fn(params, seeds, stream, chunk)), mapped over the members."""
        layout, exp = self.layout, self.exp
        sh = {} if layout.mesh is None else {"in_shardings": layout.stacked,
                                             "out_shardings": layout.stacked}
        step = jax.jit(self.stacking.map(make_train_step(exp, layout=layout)), donate_argnums=0, **sh)
        ev = jax.jit(self.stacking.map(make_eval_fn(exp, layout=layout), in_axes=(0, 0, None, None)))
        return step, ev

    # ------------------------------------------------------------------ the loop
    def _train(self, cadence: Cadence, ckpt: Checkpointer, progress) -> list[dict]:
        tr = self.common.train
        state, start, elapsed = self._start(ckpt)
        earlier = self.home.admit_start(self.common, self.exp.schedule, start,
                                        self._host(state["diverged_at"]), self.writer)
        if earlier is not None:  # nothing left to train
            return earlier
        self._claim(start)
        self._note_divergence(state)
        if self.writer:
            for m in self.members:  # appended one by one: run() closes those already open
                logger = log_backends.open_loggers(m.run, m.config.to_dict(), m.workdir, start_step=start,
                                               group=self.name if self.grouped else None)
                if logger is None:
                    break
                self.loggers.append(logger)
        train_step, eval_fn = self._compile()
        monitor = SpectralMonitor(self.exp) if self.common.spectral.every else None
        progress = (as_progress(progress) or self._default_progress()) if self.writer else None
        if progress:
            progress.compiling(self.name, start, tr.steps)
        t0 = time.perf_counter() - elapsed
        if start == 0:
            if self.home.save_initial:
                ckpt.save(0, self.home.to_checkpoint(state, self.stacking), {"wall_time_s": 0.0})
            if monitor:
                self._write_spectra(monitor, state["params"], 0, self._running())

        step, interrupted, last_eval = start, False, None
        # One process: a failed background save stops the run within a step of it. Several
        # processes must stop at the same step, so there it surfaces at the next (agreed) save.
        poll = ckpt.poll if jax.process_count() == 1 else (lambda: None)
        while step < tr.steps and self._running():
            if step == start and cadence.stopped_in_set_up():
                interrupted = True
                break
            poll()
            state, metrics = train_step(state)
            step += 1
            if progress:
                progress.tick(step)  # the host's counter: no device sync
            due = cadence.after(step)
            # Divergence is read before anything is written or saved, so no row and no
            # checkpoint of a member ever comes from a step at or past its divergence.
            if due.reads_state and not self._note_divergence(state):
                break
            running = self._running()
            rows = [[] for _ in range(self.n)]
            if due.log:
                host = self._host(metrics)
                now = time.perf_counter() - t0
                for i in running:
                    rows[i].append({"step": step, "split": "train",
                                    **{k: v[i] for k, v in host.items()}, "wall_time": now})
                if progress:
                    progress(self.name, step, tr.steps, self._progress_info(host))
            if due.eval:
                ev = self._host(eval_fn(state["params"], self.seeds, EVAL_STREAM, 0))
                last_eval = (step, ev)
                now = time.perf_counter() - t0
                for i in running:
                    rows[i].append({"step": step, "split": "eval",
                                    **{k: v[i] for k, v in ev.items()}, "wall_time": now})
                    if math.isfinite(ev["loss"][i]):
                        self.members[i].best_eval_loss = min(self.members[i].best_eval_loss,
                                                             float(ev["loss"][i]))
            self._write_rows(rows)
            if due.spectra:
                self._write_spectra(monitor, state["params"], step, running)
            stop = cadence.stop_now(due)
            if due.checkpoint or due.last or stop:
                if not self._note_divergence(state):
                    break
                self._save(ckpt, step, state, t0, ev["loss"] if due.eval else None)
            if stop and not due.last:
                interrupted = True
                break
        if progress:
            progress.finish(step)
        self._note_divergence(state)
        return self._finish(ckpt, state, step, interrupted, last_eval, eval_fn, t0)

    def _finish(self, ckpt, state, step, interrupted, last_eval, eval_fn, t0) -> list[dict]:
        if not self._running():
            # The masked steps kept the last good params and optimizer state: a member's state
            # is the one after step diverged_step - 1, so the last to diverge names the checkpoint.
            diverged = max(m.diverged_step for m in self.members)
            last_good = diverged - 1
            state = {**state, "step": jnp.full_like(state["step"], last_good)}
            if last_good > max(ckpt.steps(), default=-1):
                self._save(ckpt, last_good, state, t0, None)
            whose = "" if self.n == 1 else f" (the last of the {self.n} members of {self.name})"
            print(f"diverged: non-finite loss or gradient at step {diverged}{whose}; "
                  f"last good params (step {last_good}) are checkpointed", file=sys.stderr)
        elif not interrupted and step > max(ckpt.steps(), default=-1):
            self._save(ckpt, step, state, t0, None)
        val = last_eval[1] if last_eval and last_eval[0] == step else self._host(
            eval_fn(state["params"], self.seeds, EVAL_STREAM, 0))
        test = None
        if self.test_chunks:
            test = self._host(evaluate(eval_fn, state["params"], self.seeds, TEST_STREAM,
                                       self.test_chunks))
        wall = time.perf_counter() - t0
        num_params = count_params(member(state["params"], 0), cell=self.common.model.cell)
        ckpt.wait()
        steps = ckpt.steps()
        parallel = {"mode": self.layout.mode, "devices": self.layout.size,
                    "processes": jax.process_count()}
        summaries = []
        for i, m in enumerate(self.members):
            status = ("diverged" if m.diverged_step is not None else
                      "interrupted" if interrupted else "completed")
            final = {k: float(v[i]) for k, v in val.items()}
            tested = None if test is None else {k: float(v[i]) for k, v in test.items()}
            s = summary_lib.Summary(
                status=status, target_steps=m.run.train.steps,
                steps_completed=step if m.diverged_step is None else m.diverged_step - 1,
                diverged_step=m.diverged_step, final_eval=final,
                best_eval_loss=m.best_eval_loss if math.isfinite(m.best_eval_loss) else None,
                test=tested, baseline=m.exp.task.baseline,  # a diverged member solved nothing
                solved=status != "diverged" and m.exp.task.solved(tested or final),
                num_params=num_params, wall_time_s=wall,
                checkpoints=self.home.checkpoints(i, m.workdir, steps),
                device=jax.devices()[0].device_kind, parallel=parallel)
            summaries.append(summary_lib.write(m.workdir, s) if self.writer else s.to_json())
        if interrupted:
            print(f"{self.name}: interrupted at step {step}; run again to resume", file=sys.stderr)
        return summaries

    def _write_failure(self, good: list[int], error: StorageError) -> None:
        """Every member's summary.json after a storage failure, if the disk still takes that much."""
        for i, m in enumerate(self.members):
            failure = summary_lib.Failure(str(error), good[-1] if good else None, m.run.train.steps,
                                          self.home.checkpoints(i, m.workdir, good))
            try:
                summary_lib.write(m.workdir, failure)
            except (StorageError, WorkdirError):
                pass  # the disk is full: the error line says it all

    # ------------------------------------------------------------------ helpers
    def _host(self, tree) -> dict:
        """Numpy copies of the real members (the leading axis without padding)."""
        return jax.tree_util.tree_map(lambda v: np.asarray(v)[:self.n], to_host(tree))

    def _running(self) -> list[int]:
        return [i for i, m in enumerate(self.members) if m.diverged_step is None]

    def _note_divergence(self, state) -> bool:
        """Mark members whose train step recorded a divergence; drop their rows after the last
        good step (the same record as a run that stopped there). False once none is running."""
        for m, d in zip(self.members, self._host(state["diverged_at"])):
            if d >= 0 and m.diverged_step is None:
                m.diverged_step = int(d)
                for name in (wd.METRICS, wd.SPECTRA) if self.writer else ():
                    wd.truncate_jsonl(wd.path(m.workdir, name), int(d) - 1)
        return bool(self._running())

    def _save(self, ckpt, step, state, t0, eval_losses) -> None:
        for m in self.members if self.writer else ():  # rows on disk before their checkpoint
            for name in (wd.METRICS, wd.SPECTRA):
                if os.path.exists(wd.path(m.workdir, name)):
                    wd.append_jsonl(wd.path(m.workdir, name), [], fsync=True)
        best = [b if math.isfinite(b) else None for b in (m.best_eval_loss for m in self.members)]
        meta = {"wall_time_s": time.perf_counter() - t0, "best_eval_loss": self.home.best_meta(best)}
        ckpt.save(step, self.home.to_checkpoint(state, self.stacking), meta,
                  metrics=self.home.rank(eval_losses))

    def _write_rows(self, rows: list[list[dict]]) -> None:
        if not self.writer:
            return
        for i, m in enumerate(self.members):
            if rows[i]:
                wd.append_jsonl(wd.path(m.workdir, wd.METRICS), rows[i])
                if self.loggers:
                    self.loggers[i].log_metrics(rows[i])

    def _write_spectra(self, monitor, params, step: int, members: list[int]) -> None:
        arrays = monitor.host_arrays(params, self.stacking)
        if not self.writer:
            return
        for i in members:
            row = monitor.to_row(member(arrays, i), step)
            wd.append_jsonl(wd.path(self.members[i].workdir, wd.SPECTRA), [row])
            if self.loggers:
                self.loggers[i].log_spectra(row)

    def _progress_info(self, host: dict) -> dict:
        running = self._running()
        losses = [float(host["loss"][i]) for i in running if math.isfinite(host["loss"][i])]
        return {"members": self.n, "running": len(running), "diverged": self.n - len(running),
                "best_loss": min(losses) if losses else math.nan,
                "loss": float(host["loss"][0]), "grad_norm": float(host["grad_norm"][0])}

    def _default_progress(self) -> RunBar | None:
        """Without a progress callback: a bar on stderr, if ``train.progress`` asks for one."""
        run = self.common
        return RunBar(f"{run.model.cell}/{run.task.name}{run.task.seq_len}") if run.train.progress else None
