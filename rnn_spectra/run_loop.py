"""The host side of one run: workdir files, resume, periodic checkpoints, signals, divergence.

``train.py`` holds the pure, jittable pieces; this module drives them and owns everything that
touches the file system, so a killed or preempted run loses at most the steps since its last
checkpoint and continues exactly (same batches, same params) when started again.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import signal
import sys
import time

import jax
import ml_collections

from rnn_spectra import config as config_lib
from rnn_spectra import workdir as wd
from rnn_spectra.checkpointing import Checkpointer
from rnn_spectra.config import RunConfig
from rnn_spectra.errors import ConfigError, WorkdirError
from rnn_spectra.train import build, init_state, make_eval_fn, make_train_step
from rnn_spectra.model import count_params
from rnn_spectra.optim import make_schedule
from rnn_spectra.parallel import agree, is_writer, run_layout, to_host

# Keys that may change when a run is continued: they extend it or change only its bookkeeping.
RESUMABLE_KEYS = ("train.steps", "train.progress", "train.log_every", "train.eval_every",
                  "spectral.every", "checkpoint.every_steps", "checkpoint.every_minutes",
                  "checkpoint.keep", "parallel.mode", "parallel.num_devices", "model.unroll")


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


class WorkdirLock:
    """An exclusive flock on WORKDIR/.lock; a second process on the same workdir is refused."""

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, ".lock")
        self.fd = None

    def __enter__(self):
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise WorkdirError(f"cannot open {self.path}: {e.strerror}; check permissions") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 32, 0).decode(errors="replace").strip() or "another process"
            os.close(self.fd)
            raise WorkdirError(
                f"workdir {os.path.dirname(self.path)} is in use by pid {holder}; "
                "wait for it to finish or use another --workdir"
            ) from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, str(os.getpid()).encode(), 0)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


class SignalGuard:
    """First SIGTERM/SIGINT: ask the loop to stop after this step. Second: exit at once."""

    def __init__(self):
        self.requested = None
        self._old = {}

    def _handler(self, signum, frame):
        if self.requested is not None:
            print("second signal: exiting now", file=sys.stderr, flush=True)
            os._exit(128 + signum)
        self.requested = signal.Signals(signum).name
        print(f"\n{self.requested}: finishing this step, saving a checkpoint, then exiting "
              "(send it again to exit at once)", file=sys.stderr, flush=True)

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread: signals stay with the caller
                pass
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


class RunLoop:
    def __init__(self, run: RunConfig, config: ml_collections.ConfigDict, workdir: str):
        self.run_cfg, self.config, self.workdir = run, config, workdir
        self.exp = build(run)
        self.layout = run_layout(run.parallel, run.train.batch_size)
        # Under several processes all of them train; only process 0 touches the workdir's files
        # (Orbax writes the checkpoints collectively).
        self.writer = is_writer()

    # ------------------------------------------------------------------ set-up
    def _prepare_workdir(self) -> None:
        w = self.workdir
        if os.path.exists(w) and not os.path.isdir(w):
            raise WorkdirError(f"workdir {w} exists and is not a directory; pick another --workdir")
        if os.path.isdir(w) and os.listdir(w) and not wd.is_run(w):
            # A run killed during its first second may leave only these behind; it is still ours.
            allowed = {".lock", *wd.stale_temp_files(w)}
            if set(os.listdir(w)) - allowed:
                raise WorkdirError(
                    f"{w} is not empty and is not a run (no {wd.CONFIG}); pick a new or empty --workdir"
                )
        try:
            os.makedirs(w, exist_ok=True)
        except OSError as e:
            raise WorkdirError(f"cannot create workdir {w}: {e.strerror}") from None
        if not os.access(w, os.W_OK):
            raise WorkdirError(f"workdir {w} is not writable; check its permissions")

    def _check_existing(self) -> tuple[dict | None, dict | None]:
        """Refuse a different config; return the old (config, summary), or Nones for a new run."""
        w = self.workdir
        if not wd.is_run(w):
            return None, None
        old = wd.read_json(wd.path(w, wd.CONFIG))
        if not isinstance(old, dict):
            raise WorkdirError(f"{wd.path(w, wd.CONFIG)} is damaged (not a JSON object); "
                               "restore it or use a new --workdir")
        new = self.config.to_dict()
        defaults = config_lib.default_config().to_dict()
        # A key added to the code after this run started, at its default, is no change: the
        # run's config simply predates it. Anything else outside RESUMABLE_KEYS is refused.
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
        return old, summary

    def _refuse_diverged(self, diverged_step, last_good_step) -> None:
        raise WorkdirError(
            f"the run in {self.workdir} diverged at step {diverged_step} (its last good "
            f"checkpoint, step {last_good_step}, is kept in {wd.path(self.workdir, wd.CHECKPOINTS)}); "
            "resuming would diverge again: change the config and use a new --workdir"
        )

    def _check_schedule(self, old_config: dict | None, start: int) -> None:
        """Refuse a train.steps change that would rewrite the learning rates of done steps."""
        old_steps = _get(old_config or {}, "train.steps")
        run = self.run_cfg
        if start == 0 or not isinstance(old_steps, int) or old_steps == run.train.steps:
            return
        steps = jax.numpy.arange(start)
        old = make_schedule(run.optim, old_steps)(steps)
        if not bool(jax.numpy.array_equal(old, self.exp.schedule(steps))):
            raise ConfigError(
                f"train.steps {old_steps} -> {run.train.steps} changes the {run.optim.schedule!r} "
                f"learning-rate schedule of the {start} steps {self.workdir} has already trained; "
                "resume with the same train.steps, or start a new --workdir"
            )

    # ------------------------------------------------------------------ the loop
    def run(self) -> dict:
        self._prepare_workdir()
        lock = WorkdirLock(self.workdir) if self.writer else contextlib.nullcontext()
        with lock, SignalGuard() as guard:
            return self._run_locked(guard)

    def _run_locked(self, guard: SignalGuard) -> dict:
        run, w = self.run_cfg, self.workdir
        if self.writer:
            wd.remove_stale_temp_files(w)
        old_config, old_summary = self._check_existing()
        if old_summary and old_summary.get("status") == "diverged":
            self._refuse_diverged(old_summary.get("diverged_step"), old_summary.get("last_good_step"))
        if old_config is None and self.writer:
            # Before anything else lands in the workdir: a run killed from here on is resumable.
            wd.write_json(wd.path(w, wd.CONFIG), self.config.to_dict())
        ckpt = Checkpointer(wd.path(w, wd.CHECKPOINTS), every_steps=run.checkpoint.every_steps,
                            every_minutes=run.checkpoint.every_minutes, keep=run.checkpoint.keep)
        try:
            return self._train(guard, ckpt, old_config, old_summary)
        finally:
            ckpt.close()  # waits for the async save on every exit path

    def _train(self, guard, ckpt: Checkpointer, old_config, old_summary) -> dict:
        exp, run, w, layout = self.exp, self.run_cfg, self.workdir, self.layout
        # Replicated over the mesh (a no-op on one device); a restore lands in the same layout.
        state = layout.put(init_state(exp, run.seed))
        elapsed, best = 0.0, math.inf
        if ckpt.steps():
            state, meta = ckpt.restore(state)
            elapsed = float(meta.get("wall_time_s") or 0.0)
            # None until the first finite eval: JSON has no inf.
            best = math.inf if meta.get("best_eval_loss") is None else float(meta["best_eval_loss"])
        start = int(state["step"])
        if int(state["diverged_at"]) >= 0:  # even if summary.json was never written
            self._refuse_diverged(int(state["diverged_at"]), start)
        if old_summary and old_summary.get("status") == "completed" and start >= run.train.steps:
            print(f"{w}: already completed {start} steps (raise --config.train.steps to extend)",
                  file=sys.stderr)
            return old_summary
        if start > run.train.steps:
            raise ConfigError(f"{w} is at step {start}, beyond train.steps={run.train.steps}; "
                              f"resume with --config.train.steps={start} or more")
        self._check_schedule(old_config, start)
        # Rows past the restored step were never checkpointed; they are written again. The step-0
        # spectrum is measured before training, so a restart from scratch measures it again.
        if self.writer:
            wd.truncate_jsonl(wd.path(w, wd.METRICS), start)
            wd.truncate_jsonl(wd.path(w, wd.SPECTRA), start if start else -1)
            wd.write_json(wd.path(w, wd.CONFIG), self.config.to_dict())
            if start:
                print(f"resuming {w} from step {start}", file=sys.stderr)

        shardings = {} if layout.mesh is None else {
            "in_shardings": layout.replicated, "out_shardings": layout.replicated}
        train_step = jax.jit(make_train_step(exp, layout=layout), donate_argnums=0, **shardings)
        eval_fn = jax.jit(make_eval_fn(exp, layout=layout), **shardings)
        write = self._writer_only
        monitor = None
        if run.spectral.every:
            from rnn_spectra.spectral.monitor import SpectralMonitor

            monitor = SpectralMonitor(exp)
            # Its ~3 s set-up (cold compilation cache) was most of its cost in a 1000-step run:
            # it now compiles in a thread while training starts, and the step-0 spectrum is
            # measured on a host copy of the initial params once it is ready.
            monitor.prepare_in_background(state["params"])
            if start == 0:
                monitor.hold(state["params"])

        def flush_step0(due: bool = True):
            """Write the step-0 spectrum row once the monitor hands it over; always before any
            later row, any checkpoint and the end, so the rows on disk are those of a plain run."""
            held = monitor.take_held(due) if monitor else None
            if held is not None:
                row = monitor.measure(layout.put(held[0]), 0)
                write(wd.append_jsonl, wd.path(w, wd.SPECTRA), [row])

        progress = _progress(run, start, enabled=self.writer)
        t0 = time.perf_counter() - elapsed
        target, tr = run.train.steps, run.train
        status, diverged_step, final_eval, step = "completed", None, None, start
        while step < target:
            if guard.requested and step == start and jax.process_count() == 1:  # during set-up
                status = "interrupted"
                break
            state, metrics = train_step(state)
            step += 1
            last = step == target
            flush_step0(due=False)  # as soon as the monitor is ready
            # Rows only at fixed steps (never at an interruption), so an interrupted and resumed
            # run writes exactly the rows of an uninterrupted one.
            log_now, eval_now = step % tr.log_every == 0 or last, step % tr.eval_every == 0 or last
            due, requested = self._stop_flags(step, log_now, ckpt, guard)
            # Divergence is read before anything is written or saved, so no row and no
            # checkpoint ever comes from a step at or past the divergence.
            if (log_now or eval_now or due or requested) and int(state["diverged_at"]) >= 0:
                status, diverged_step = "diverged", int(state["diverged_at"])
                break
            rows = []
            if log_now:
                host = to_host(metrics)
                rows.append({"step": step, "split": "train", **host,
                             "wall_time": time.perf_counter() - t0})
                progress.update(step - progress.n)
                progress.set_postfix(loss=f"{host['loss']:.4g}", grad_norm=f"{host['grad_norm']:.3g}")
            if eval_now:
                final_eval = to_host(eval_fn(state["params"]))
                rows.append({"step": step, "split": "eval", **final_eval,
                             "wall_time": time.perf_counter() - t0})
                if math.isfinite(final_eval["loss"]):
                    best = min(best, float(final_eval["loss"]))
            write(wd.append_jsonl, wd.path(w, wd.METRICS), rows)
            if monitor and (step % run.spectral.every == 0 or last):
                flush_step0()
                write(wd.append_jsonl, wd.path(w, wd.SPECTRA), [monitor.measure(state["params"], step)])
            # Looked at only now: a signal may have come during the eval or the writes above
            # (under several processes, only at log steps: see _stop_flags).
            if jax.process_count() == 1:
                requested = guard.requested is not None
            stopping = last or requested
            if stopping or due:
                if int(state["diverged_at"]) >= 0:
                    status, diverged_step = "diverged", int(state["diverged_at"])
                    break
                flush_step0()
                for name in (wd.METRICS, wd.SPECTRA):  # rows on disk before their checkpoint
                    if self.writer and os.path.exists(wd.path(w, name)):
                        wd.append_jsonl(wd.path(w, name), [], fsync=True)
                ckpt.save(step, state, self._meta(t0, best),
                          metrics={"eval_loss": float(final_eval["loss"])} if eval_now else None)
            if stopping and not last:
                status = "interrupted"
                break
        progress.close()
        flush_step0()  # a run that stopped before the monitor was ready

        last_good = step
        if status == "diverged":
            # The masked steps kept the last good params and optimizer state: that state is the
            # one after step diverged_step - 1, so it is checkpointed under that step.
            last_good = diverged_step - 1
            state = {**state, "step": jax.numpy.asarray(last_good, jax.numpy.int32)}
            for name in (wd.METRICS, wd.SPECTRA):
                write(wd.truncate_jsonl, wd.path(w, name), last_good)
            if last_good > max(ckpt.steps(), default=-1):
                ckpt.save(last_good, state, self._meta(t0, best))
            final_eval = to_host(eval_fn(state["params"]))
            print(f"diverged: non-finite loss or gradient at step {diverged_step}; "
                  f"last good params (step {last_good}) are checkpointed", file=sys.stderr)
        elif final_eval is None and status == "completed":
            # Killed after its final checkpoint but before summary.json: nothing left to train.
            final_eval = to_host(eval_fn(state["params"]))
        summary = self._summary(status, last_good, diverged_step, final_eval, t0, best, ckpt,
                                count_params(state["params"]))
        write(wd.write_json, wd.path(w, wd.SUMMARY), summary)
        return summary

    def _writer_only(self, fn, *args):
        if self.writer:
            fn(*args)

    def _stop_flags(self, step: int, log_now: bool, ckpt: Checkpointer, guard) -> tuple[bool, bool]:
        """(checkpoint due, stop requested) after ``step``. Under several processes a signal or
        the checkpoint clock may reach them at different steps: they compare notes at log steps
        (one small all-gather) and act on the agreed flags; between log steps only the step-based
        checkpoint period, the same everywhere, counts."""
        due, requested = ckpt.due(step), guard.requested is not None
        if jax.process_count() == 1:
            return due, requested
        if not log_now:
            return bool(ckpt.every_steps and step % ckpt.every_steps == 0), False
        return agree(due), agree(requested)

    def _meta(self, t0: float, best: float) -> dict:
        return {"wall_time_s": time.perf_counter() - t0,
                "best_eval_loss": best if math.isfinite(best) else None}

    def _summary(self, status, step, diverged_step, final_eval, t0, best, ckpt, num_params) -> dict:
        exp = self.exp
        final = {k: float(v) for k, v in (final_eval or {}).items()}
        ckpt.wait()
        return {
            "status": status,
            "steps_completed": step,
            "target_steps": self.run_cfg.train.steps,
            "diverged_step": diverged_step,
            "last_good_step": step,
            "final_eval": final,
            "best_eval_loss": best if math.isfinite(best) else None,
            "baseline": exp.task.baseline,
            "solved": exp.task.solved(final) if final else False,
            "num_params": num_params,
            "wall_time_s": time.perf_counter() - t0,
            "checkpoint_steps": ckpt.steps(),
            "device": jax.devices()[0].device_kind,
            "parallel": {"mode": self.layout.mode, "devices": self.layout.size,
                         "processes": jax.process_count()},
        }


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


def _progress(run: RunConfig, start: int, enabled: bool = True):
    from tqdm.auto import tqdm

    return tqdm(total=run.train.steps, initial=start, disable=not (run.train.progress and enabled),
                desc=f"{run.model.cell}/{run.task.name}{run.task.seq_len}", file=sys.stderr,
                dynamic_ncols=True, leave=False)
