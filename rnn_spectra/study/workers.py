"""A study's groups as units of work: one group by itself (``study --phase P --group K``, what a
cluster's array task runs), and a phase's groups spread over N local worker processes
(``study --workers N``).

Workers are long-lived processes (started with ``spawn``: JAX does not survive ``fork``) that
take the largest groups first. A group's numbers depend only on its members' configs and seeds,
so a study run by workers gives the same results as one process, bit for bit
(tests/test_study_workers.py), on one condition: XLA's own settings stay as they are. Each worker
is pinned to its share of the cores by CPU affinity only (``pin_plan``): unpinned, every
worker's XLA thread pool spins on every core and the workers slow each other down; with
single-threaded XLA (``--xla_cpu_multi_thread_eigen=false``) instead, the GRU's and LSTM's
matmuls split differently and their numbers move at the float32 rounding level.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import signal

from rnn_spectra.errors import Interrupted, UserError, WorkdirError


def default_workers() -> int:
    """One per core this process may use (``sched_getaffinity``: Slurm's or taskset's share)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def pin_plan(workers: int, cores: list[int]) -> list[set[int]]:
    """Each worker's cores: the cores split into ``workers`` disjoint, nearly equal shares, or
    (more workers than cores) one core each, in turn."""
    if workers >= len(cores):
        return [{cores[i % len(cores)]} for i in range(workers)]
    return [set(cores[i::workers]) for i in range(workers)]


def _worker_init(cache: bool, shares) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; it forwards a SIGTERM
    if shares is not None:  # before JAX starts its thread pool, which sizes itself by affinity
        os.sched_setaffinity(0, shares.get())
    if cache:  # the parent's persistent compilation cache: a program compiles once per machine
        from rnn_spectra.backend import enable_compilation_cache

        enable_compilation_cache()


def _train_group(train_one_group, preset, workdir, overrides, seed_offset, phase_name, k) -> str:
    """In a worker: train group ``k`` of ``phase_name`` with ``study.run.train_one_group`` (passed
    in, pickled by name, so this module does not import the study it serves); 'done', 'done
    before' (skipped), 'interrupted' or the one-line error of a UserError (so the parent can say
    it)."""
    try:
        trained = train_one_group(preset, workdir, phase_name, k, overrides=overrides,
                                  seed_offset=seed_offset, record=False, bar=False)
    except Interrupted:
        return "interrupted"
    except UserError as e:
        return f"error: {e}"
    return "done" if trained else "done before"


class WorkerPool:
    """``workers`` long-lived processes for the whole study: each pays JAX's start-up once, and
    its compilation cache is warm for the next group of the same shapes."""

    def __init__(self, workers: int, train_one_group):
        self.workers, self.train_one_group = workers, train_one_group
        import jax

        cache = bool(jax.config.jax_compilation_cache_dir)
        ctx = multiprocessing.get_context("spawn")
        shares = None
        if hasattr(os, "sched_setaffinity"):  # Linux: one share of this process's cores each
            shares = ctx.SimpleQueue()
            for share in pin_plan(workers, sorted(os.sched_getaffinity(0))):
                shares.put(share)
        self.pool = cf.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init,
                                           initargs=(cache, shares))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if exc[0] is not None:  # stopped or failed: the workers stop at their next safe point
            for pid in list(getattr(self.pool, "_processes", None) or {}):
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        self.pool.shutdown(wait=True, cancel_futures=exc[0] is not None)
        return False

    def train_phase(self, phase, name: str, members, overrides, seed_offset: int, bar) -> None:
        """One phase's groups, largest first; the parent records the members in study.json
        first and moves the study's bar (``progress.StudyBar``) as groups finish. Interrupted if
        a worker was stopped or died, WorkdirError on a worker's one-line error."""
        from rnn_spectra.study.plan import PHASES

        if not members:
            return
        groups = phase.prepare(members)
        phase.record_members()
        bar.line(f"{phase.preset.name} {PHASES[name]}: {len(members)} members in {len(groups)} "
                 f"programs on {min(self.workers, len(groups))} workers")
        bar.add_phase(PHASES[name], len(groups), sum(g.cost for g in groups))
        futures = {self.pool.submit(_train_group, self.train_one_group, phase.preset,
                                    phase.workdir, overrides, seed_offset, name, g.index): g
                   for g in sorted(groups, key=lambda g: -g.cost)}
        outcomes = {}
        for f in cf.as_completed(futures):
            try:
                outcomes[futures[f].name] = f.result()
            except cf.process.BrokenProcessPool:  # a worker died: killed for memory, a crash
                raise Interrupted(
                    f"a worker process died while training group {futures[f].name} (killed for "
                    f"memory? try fewer --workers); finished groups and checkpoints are kept: "
                    "run the same command to resume") from None
            # a group found done before leaves the bar's total; a trained one moves the bar
            bar.done(futures[f].cost, trained=outcomes[futures[f].name] == "done")
            bar.line(f"  {futures[f].name}: {outcomes[futures[f].name]}")
        phase.found_done += sum(o == "done before" for o in outcomes.values())
        errors = [f"{g}: {o[len('error: '):]}" for g, o in outcomes.items() if o.startswith("error")]
        if errors:
            raise WorkdirError(errors[0])
        stopped = [g for g, o in outcomes.items() if o == "interrupted"]
        if stopped:
            raise Interrupted(f"interrupted in group {stopped[0]} (checkpointed); run the same "
                              "command to resume")
