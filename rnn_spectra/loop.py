"""THE host loop: trains S members that share one compiled program (a single run is S = 1).

``train.py`` holds the pure, jittable pieces; this loop drives them and owns everything that
touches files: cadence (log, eval, spectra, checkpoints), stop agreement between processes,
divergence (a member whose loss or gradient turns non-finite is frozen by the train step and
recorded as ``diverged``; the others go on), resume, signals and the summaries.

A single run (``train_and_evaluate``, no ``group_dir``) trains unstacked, keeps its checkpoints
in its own workdir and goes through workdir admission (``resume.py``). A sweep (``group_dir``)
trains its members stacked under ``jax.vmap``, keeps stacked checkpoints in ``group_dir``
(including step 0, so each member's initial params can be exported for analysis) and writes an
ordinary workdir per member, so everything downstream reads it like a single run.
"""

from __future__ import annotations

import contextlib
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
from rnn_spectra import control, resume
from rnn_spectra import workdir as wd
from rnn_spectra.checkpointing import Checkpointer
from rnn_spectra.errors import ConfigError, StorageError
from rnn_spectra.memory import check_fits
from rnn_spectra.model import count_params
from rnn_spectra.parallel import is_writer, run_layout, sweep_layout, to_host
from rnn_spectra.rng import EVAL_STREAM, TEST_STREAM
from rnn_spectra.signals import SignalGuard
from rnn_spectra.spectral.monitor import SpectralMonitor
from rnn_spectra.sweep import Stacking, member, program_signature
from rnn_spectra.train import build, init_state, make_eval_fn, make_train_step, reduce_metrics

Progress = Callable[[str, int, int, dict], None]  # (name, step, steps, info) at log steps


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Train one run into ``workdir`` (resuming it if it holds a checkpoint); returns summary.json."""
    return Loop([config], [workdir]).run()[0]


class Loop:
    """``Loop(configs, workdirs, group_dir=None).run() -> [summary per member]``."""

    def __init__(self, configs: Sequence[ml_collections.ConfigDict], workdirs: Sequence[str],
                 group_dir: str | None = None, *, name: str | None = None, test_chunks: int | None = None):
        if len(configs) != len(workdirs) or not configs:
            raise ValueError("need one workdir per member config, and at least one member")
        if group_dir is None and len(configs) != 1:
            raise ValueError("several members train as a sweep: give a group_dir for their checkpoints")
        self.configs, self.workdirs, self.group_dir = list(configs), list(workdirs), group_dir
        self.stacked = group_dir is not None
        self.name = name or ("sweep" if self.stacked else os.path.basename(workdirs[0].rstrip("/")))
        self.runs = [config_lib.resolve(c) for c in configs]
        if len({program_signature(r) for r in self.runs}) != 1:
            raise ConfigError(f"sweep group {self.name}: members differ in more than seed, init, "
                              "learning rate and clip threshold; split them with group_by_program")
        self.exps = [build(r) for r in self.runs]
        self.exp, run = self.exps[0], self.runs[0]
        # Test set = test_chunks x eval_batches x eval_batch_size; a sweep's summaries carry it
        # (a study reports test numbers), a single run's by request.
        self.test_chunks = (4 if self.stacked else 0) if test_chunks is None else test_chunks
        self.n = len(self.runs)
        if self.stacked:
            self.layout = sweep_layout(run.parallel, run.train.batch_size)
            self.members = Stacking(self.layout, self.n)
            self.seeds = self.members.put(np.asarray([r.seed for r in self.runs], np.int32))
        else:
            self.layout, self.seeds = run_layout(run.parallel, run.train.batch_size), run.seed
        # Before anything is written: a config too large for the device is one line, not a
        # RESOURCE_EXHAUSTED traceback after config.json already claimed the workdir.
        check_fits(self.exp, self.n, self.layout,
                   what=f"sweep group {self.name}" if self.stacked else "this config")
        # Under several processes all of them train; only process 0 touches the workdirs' files
        # (Orbax writes the checkpoints collectively).
        self.writer = is_writer()
        if run.log.tensorboard:
            from rnn_spectra.tensorboard import require_tensorboardx

            require_tensorboardx()  # before anything is written

    # ------------------------------------------------------------------ set-up
    def run(self, progress: Progress | None = None) -> list[dict]:
        own = self.group_dir or self.workdirs[0]
        new, self._lock = not os.path.lexists(own), None
        try:
            return self._run(own, progress)
        except BaseException:
            # e.g. a full disk or a signal during set-up; never a workdir another process holds
            if new and not self.stacked and self.writer and not getattr(self._lock, "busy", False):
                resume.remove_unstarted_workdir(own)
            raise

    def _run(self, own: str, progress: Progress | None) -> list[dict]:
        if self.stacked:
            os.makedirs(own, exist_ok=True)
        else:
            resume.prepare_workdir(own)
        lock = self._lock = resume.WorkdirLock(own) if self.writer else contextlib.nullcontext()
        with lock, SignalGuard() as guard, control.lapack_threads(self.runs[0]):
            old_config, old_summary = None, None
            if not self.stacked:
                if self.writer:
                    wd.remove_stale_temp_files(own)
                old_config, old_summary = resume.existing_run(own, self.configs[0])
                if old_config is None and self.writer:
                    # Before anything else lands in the workdir: a run killed from here on resumes.
                    wd.write_json(wd.path(own, wd.CONFIG), self.configs[0].to_dict())
            run = self.runs[0]
            ckpt = Checkpointer(os.path.join(own, wd.CHECKPOINTS), every_steps=run.checkpoint.every_steps,
                                every_minutes=run.checkpoint.every_minutes, keep=run.checkpoint.keep)
            loggers = []
            try:
                return self._train(guard, ckpt, old_config, old_summary, progress, loggers)
            except StorageError as e:  # a full disk: stop here, say so in every summary.json
                if self.writer:
                    resume.record_failure(self.workdirs, self.runs, ckpt.good_steps(), e,
                                          self.group_dir, self.name)
                raise
            finally:
                ckpt.close()  # waits for the async save on every exit path
                for logger in loggers:
                    logger.close()

    def _compile(self):
        """(train_step, eval) for this layout: vmapped over the members when stacked."""
        layout, exp = self.layout, self.exp
        if self.stacked:
            sh = {} if layout.mesh is None else {"in_shardings": layout.stacked,
                                                 "out_shardings": layout.stacked}
            step = jax.jit(jax.vmap(make_train_step(exp, layout=layout)), donate_argnums=0, **sh)
            ev = jax.jit(jax.vmap(make_eval_fn(exp, layout=layout), in_axes=(0, 0, None, None)))
            return step, lambda params, stream, chunk: ev(params, self.seeds, stream, chunk)
        sh = {} if layout.mesh is None else {"in_shardings": layout.replicated,
                                             "out_shardings": layout.replicated}
        step = jax.jit(make_train_step(exp, layout=layout), donate_argnums=0, **sh)
        fn = make_eval_fn(exp, layout=layout)
        # The stream and chunk are constants of the program, as the seed is.
        ev = jax.jit(lambda params, stream, chunk: fn(params, self.seeds, stream, chunk),
                     static_argnums=(1, 2), **sh)
        return step, ev

    def _host(self, tree) -> dict:
        """Numpy copies with a leading member axis of the real members."""
        fix = (lambda v: np.asarray(v)[:self.n]) if self.stacked else (lambda v: np.asarray(v)[None])
        return jax.tree_util.tree_map(fix, to_host(tree))

    def _claim(self, start: int) -> None:
        """Write every member's config; drop rows past ``start`` (never checkpointed; written
        again). A start at step 0 measures the step-0 spectrum again: drop an old one."""
        if not self.writer:
            return
        for cfg, w in zip(self.configs, self.workdirs):
            os.makedirs(w, exist_ok=True)
            wd.truncate_jsonl(wd.path(w, wd.METRICS), start)
            wd.truncate_jsonl(wd.path(w, wd.SPECTRA), start if start else -1)
            wd.write_json(wd.path(w, wd.CONFIG), cfg.to_dict())

    # ------------------------------------------------------------------ the loop
    def _train(self, guard, ckpt: Checkpointer, old_config, old_summary, progress, loggers) -> list[dict]:
        run, tr, w0 = self.runs[0], self.runs[0].train, self.workdirs[0]
        states = [init_state(e, r.seed) for e, r in zip(self.exps, self.runs)]
        # Replicated over a data mesh (a no-op on one device); a restore lands in the same layout.
        state = self.members.stack(states, self.name) if self.stacked else self.layout.put(states[0])
        elapsed, best = 0.0, [math.inf] * self.n
        if ckpt.steps():
            template = self.members.unpadded(state) if self.stacked else state
            restored, meta = ckpt.restore(template)
            state = self.members.padded(restored) if self.stacked else restored
            elapsed = float(meta.get("wall_time_s") or 0.0)
            # None until the first finite eval: JSON has no inf.
            saved_best = meta.get("best_eval_loss")
            if isinstance(saved_best, list) != self.stacked:  # exported from a group before the
                saved_best = None if not self.stacked else [None] * self.n  # meta was per member
            for i, b in enumerate(saved_best if isinstance(saved_best, list) else [saved_best]):
                best[i] = math.inf if b is None else float(b)
        start = int(self._host(state["step"])[0])
        statuses = [("running", None)] * self.n
        if not self.stacked:
            diverged_at = int(self._host(state["diverged_at"])[0])
            if diverged_at >= 0:  # even if summary.json was never written
                resume.refuse_diverged(w0, diverged_at, start)
            if old_summary and old_summary.get("status") == "completed" and start >= tr.steps:
                print(f"{w0}: already completed {start} steps (raise --config.train.steps to extend)",
                      file=sys.stderr)
                return [old_summary]
            if start > tr.steps:
                raise ConfigError(f"{w0} is at step {start}, beyond train.steps={tr.steps}; "
                                  f"resume with --config.train.steps={start} or more")
            resume.check_schedule(w0, run, self.exp.schedule, old_config, start)
            if start and self.writer:
                print(f"resuming {w0} from step {start}", file=sys.stderr)
        self._claim(start)
        self._note_divergence(state, statuses)
        if run.log.tensorboard and self.writer:
            from rnn_spectra.tensorboard import TensorBoardLogger

            loggers += [TensorBoardLogger(w, start_step=start) for w in self.workdirs]
        train_step, eval_fn = self._compile()
        monitor = SpectralMonitor(self.exp) if run.spectral.every else None
        progress = progress or self._default_progress(start)
        t0 = time.perf_counter() - elapsed
        if start == 0:
            if self.stacked:  # every member's initial params, for analysis (export_member_checkpoints)
                ckpt.save(0, self.members.unpadded(state), {"wall_time_s": 0.0})
            if monitor:
                self._write_spectra(monitor, state["params"], 0, self._running(statuses), loggers)

        step, interrupted, last_eval = start, False, None
        # One process: a failed background save stops the run within a step of it. Several
        # processes must stop at the same step, so there it surfaces at the next (agreed) save.
        poll = ckpt.poll if jax.process_count() == 1 else (lambda: None)
        while step < tr.steps and self._running(statuses):
            if guard.requested and step == start and jax.process_count() == 1:  # during set-up
                interrupted = True
                break
            poll()
            state, metrics = train_step(state)
            step += 1
            last = step == tr.steps
            # Rows only at fixed steps (never at an interruption), so an interrupted and resumed
            # run writes exactly the rows of an uninterrupted one.
            log_now, eval_now = step % tr.log_every == 0 or last, step % tr.eval_every == 0 or last
            due, requested = resume.stop_flags(step, log_now, ckpt, guard)
            # Divergence is read before anything is written or saved, so no row and no
            # checkpoint of a member ever comes from a step at or past its divergence.
            if (log_now or eval_now or due or requested) and not self._note_divergence(state, statuses):
                break
            running = self._running(statuses)
            rows = [[] for _ in range(self.n)]
            if log_now:
                host = self._host(metrics)
                now = time.perf_counter() - t0
                for i in running:
                    rows[i].append({"step": step, "split": "train",
                                    **{k: v[i] for k, v in host.items()}, "wall_time": now})
                if progress and self.writer:
                    progress(self.name, step, tr.steps, self._progress_info(host, statuses))
            if eval_now:
                ev = self._host(eval_fn(state["params"], EVAL_STREAM, 0))
                last_eval = (step, ev)
                now = time.perf_counter() - t0
                for i in running:
                    rows[i].append({"step": step, "split": "eval",
                                    **{k: v[i] for k, v in ev.items()}, "wall_time": now})
                    if math.isfinite(ev["loss"][i]):
                        best[i] = min(best[i], float(ev["loss"][i]))
            self._write_rows(rows, loggers)
            if monitor and (step % run.spectral.every == 0 or last):
                self._write_spectra(monitor, state["params"], step, running, loggers)
            if jax.process_count() == 1:  # a signal may have come during the eval or the writes
                requested = guard.requested is not None
            if due or last or requested:
                if not self._note_divergence(state, statuses):
                    break
                self._save(ckpt, step, state, t0, best,
                           ev["loss"][0] if eval_now and not self.stacked else None)
            if requested and not last:
                interrupted = True
                break
        if hasattr(progress, "close"):
            progress.close()
        self._note_divergence(state, statuses)
        return self._finish(ckpt, state, step, statuses, interrupted, last_eval, eval_fn, t0, best)

    def _finish(self, ckpt, state, step, statuses, interrupted, last_eval, eval_fn, t0, best):
        if not self.stacked and statuses[0][0] == "diverged":
            # The masked steps kept the last good params and optimizer state: that state is the
            # one after step diverged_step - 1, so it is checkpointed under that step.
            last_good = statuses[0][1] - 1
            state = {**state, "step": jnp.asarray(last_good, jnp.int32)}
            if last_good > max(ckpt.steps(), default=-1):
                self._save(ckpt, last_good, state, t0, best, None)
            print(f"diverged: non-finite loss or gradient at step {statuses[0][1]}; "
                  f"last good params (step {last_good}) are checkpointed", file=sys.stderr)
        elif not interrupted and step > max(ckpt.steps(), default=-1):
            self._save(ckpt, step, state, t0, best, None)  # every member of a group diverged
        val = last_eval[1] if last_eval and last_eval[0] == step else self._host(
            eval_fn(state["params"], EVAL_STREAM, 0))
        test = None
        if self.test_chunks:
            parts = [eval_fn(state["params"], TEST_STREAM, c) for c in range(self.test_chunks)]
            test = self._host(reduce_metrics({k: jnp.stack([p[k] for p in parts]) for k in parts[0]}, 0))
        wall = time.perf_counter() - t0
        num_params = count_params(member(state["params"], 0) if self.stacked else state["params"],
                                  cell=self.runs[0].model.cell)
        ckpt.wait()
        summaries = []
        for i, (w, r, e, (status, diverged_step)) in enumerate(zip(self.workdirs, self.runs, self.exps, statuses)):
            if status == "running":
                status = "interrupted" if interrupted else "completed"
            last_good = diverged_step - 1 if diverged_step is not None else step
            final = {k: float(v[i]) for k, v in val.items()}
            s = {"status": status, "steps_completed": last_good, "target_steps": r.train.steps,
                 "diverged_step": diverged_step, "last_good_step": last_good, "final_eval": final,
                 "best_eval_loss": best[i] if math.isfinite(best[i]) else None}
            if test is not None:
                s["test"] = {k: float(v[i]) for k, v in test.items()}
            s.update({"baseline": e.task.baseline,  # a diverged member solved nothing
                      "solved": status != "diverged" and e.task.solved(s.get("test", final)),
                      "num_params": num_params, "wall_time_s": wall})
            if self.stacked:
                s["sweep"] = {"group": self.name, "index": i, "members": self.n,
                              # relative, so a study directory can be moved or copied whole
                              "group_dir": os.path.relpath(self.group_dir, w)}
            else:
                s["checkpoint_steps"] = ckpt.steps()
            s.update({"device": jax.devices()[0].device_kind,
                      "parallel": {"mode": self.layout.mode, "devices": self.layout.size,
                                   "processes": jax.process_count()}})
            if self.writer:
                wd.write_json(wd.path(w, wd.SUMMARY), s)
            summaries.append(s)
        if interrupted:
            print(f"{self.name}: interrupted at step {step}; run again to resume", file=sys.stderr)
        return summaries

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _running(statuses) -> list[int]:
        return [i for i, s in enumerate(statuses) if s[0] == "running"]

    def _note_divergence(self, state, statuses) -> bool:
        """Mark members whose train step recorded a divergence; drop their rows after the last
        good step (the same record as a run that stopped there). False once none is running."""
        for i, d in enumerate(self._host(state["diverged_at"])):
            if d >= 0 and statuses[i][0] == "running":
                statuses[i] = ("diverged", int(d))
                for name in (wd.METRICS, wd.SPECTRA) if self.writer else ():
                    wd.truncate_jsonl(wd.path(self.workdirs[i], name), int(d) - 1)
        return bool(self._running(statuses))

    def _save(self, ckpt, step, state, t0, best, eval_loss) -> None:
        for w in self.workdirs if self.writer else ():  # rows on disk before their checkpoint
            for name in (wd.METRICS, wd.SPECTRA):
                if os.path.exists(wd.path(w, name)):
                    wd.append_jsonl(wd.path(w, name), [], fsync=True)
        finite = [b if math.isfinite(b) else None for b in best]
        meta = {"wall_time_s": time.perf_counter() - t0,
                "best_eval_loss": finite if self.stacked else finite[0]}
        ckpt.save(step, self.members.unpadded(state) if self.stacked else state, meta,
                  metrics=None if eval_loss is None else {"eval_loss": float(eval_loss)})

    def _write_rows(self, rows: list[list[dict]], loggers) -> None:
        if not self.writer:
            return
        for i, w in enumerate(self.workdirs):
            if rows[i]:
                wd.append_jsonl(wd.path(w, wd.METRICS), rows[i])
                if loggers:
                    loggers[i].log_metrics(rows[i])

    def _write_spectra(self, monitor, params, step: int, members: list[int], loggers) -> None:
        arrays = monitor.host_arrays(params, stacked=self.stacked)
        if not self.writer:
            return
        for i in members:
            row = monitor.to_row(member(arrays, i) if self.stacked else arrays, step)
            wd.append_jsonl(wd.path(self.workdirs[i], wd.SPECTRA), [row])
            if loggers:
                loggers[i].log_spectra(row)

    def _progress_info(self, host: dict, statuses) -> dict:
        running = self._running(statuses)
        losses = [float(host["loss"][i]) for i in running if math.isfinite(host["loss"][i])]
        return {"members": self.n, "running": len(running),
                "diverged": sum(s[0] == "diverged" for s in statuses),
                "best_loss": min(losses) if losses else math.nan,
                "loss": float(host["loss"][0]), "grad_norm": float(host["grad_norm"][0])}

    def _default_progress(self, start: int):
        run = self.runs[0]
        if self.stacked or not (run.train.progress and self.writer):
            return None
        return _Bar(run, start)


class _Bar:
    """A single run's tqdm bar on stderr, updated at log steps."""

    def __init__(self, run, start: int):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=run.train.steps, initial=start, file=sys.stderr, dynamic_ncols=True,
                        desc=f"{run.model.cell}/{run.task.name}{run.task.seq_len}", leave=False)

    def __call__(self, name, step, steps, info) -> None:
        self.bar.update(step - self.bar.n)
        self.bar.set_postfix(loss=f"{info['loss']:.4g}", grad_norm=f"{info['grad_norm']:.3g}")

    def close(self) -> None:
        self.bar.close()
