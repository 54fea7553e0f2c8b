"""Sweeps that compile once: every member config that keeps array shapes trains in one program.

Seeds, recurrent init schemes, learning rates and clip thresholds (with "none" as an infinite
global-norm threshold) do not change shapes, so members that differ only in those are stacked
along a leading axis and trained by ``jax.vmap`` of the single-run train step: one compile per
(task, T, architecture, hidden size, optimizer family) instead of one per member. A member that
diverges is masked by the train step itself (its params stop changing, its step is recorded);
the others never see it. Each member still gets an ordinary workdir (config.json, metrics.jsonl,
spectra.jsonl, summary.json), so everything downstream treats it like a single run.
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
from rnn_spectra import workdir as wd
from rnn_spectra.checkpointing import Checkpointer
from rnn_spectra.config import RunConfig
from rnn_spectra.errors import ConfigError
from rnn_spectra.model import count_params
from rnn_spectra.parallel import agree, is_writer, padded_size, sweep_layout, to_host
from rnn_spectra.run_loop import SignalGuard, WorkdirLock
from rnn_spectra.train import (
    EVAL_STREAM, TEST_STREAM, build, evaluate, init_state, make_eval_fn, make_train_step,
)

# Cells that are the same program as another one (same module, same activation).
SAME_PROGRAM = {"irnn": "relu_rnn"}


def program_signature(run: RunConfig) -> RunConfig:
    """The config with every vmappable field blanked: members with equal signatures share a program."""
    clip = "global_norm" if run.optim.clip == "none" else run.optim.clip
    return dataclasses.replace(
        run,
        seed=0,
        model=dataclasses.replace(run.model, cell=SAME_PROGRAM.get(run.model.cell, run.model.cell),
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


@dataclasses.dataclass
class MemberStatus:
    status: str = "running"
    diverged_step: int | None = None


class SweepGroup:
    """Members sharing one program: ``run()`` trains them together and writes their workdirs.

    ``group_dir`` holds the stacked checkpoints (periodic per ``checkpoint.every_steps`` of the
    members' config, plus step 0 and the end), so a preempted group resumes exactly.
    """

    def __init__(self, configs: Sequence[ml_collections.ConfigDict], workdirs: Sequence[str],
                 group_dir: str, *, name: str = "sweep", test_chunks: int = 4):
        if len(configs) != len(workdirs) or not configs:
            raise ValueError("need one workdir per member config, and at least one member")
        self.configs, self.workdirs, self.group_dir, self.name = configs, workdirs, group_dir, name
        self.runs = [config_lib.resolve(c) for c in configs]
        signatures = {program_signature(r) for r in self.runs}
        if len(signatures) != 1:
            raise ConfigError(f"sweep group {name}: members differ in more than seed, init, "
                              "learning rate and clip threshold; split them with group_by_program")
        self.exp = build(self.runs[0])
        self.member_exps = [build(r) for r in self.runs]
        self.test_chunks = test_chunks  # test set = test_chunks x eval_batches x eval_batch_size
        # Members sharded over the devices (parallel.py); padded with copies of member 0 to a
        # multiple of the device count. Padding is computed, never written or checkpointed.
        self.layout = sweep_layout(self.runs[0].parallel, self.runs[0].train.batch_size)
        self.n = len(self.runs)
        self.n_pad = padded_size(self.n, self.layout)
        self.seeds = self.layout.put(self._pad_list([r.seed for r in self.runs]).astype(np.int32),
                                     self.layout.stacked)
        self.writer = is_writer()

    def _pad_list(self, items: list) -> np.ndarray:
        return np.asarray(items + [items[0]] * (self.n_pad - self.n))

    # ------------------------------------------------------------------ pieces
    def init_states(self):
        """Stacked initial states, each exactly the state the member would start from alone
        (eager init: after the first call it costs milliseconds per member, while jitting it
        would compile once per init scheme)."""
        states = [init_state(e, r.seed) for e, r in zip(self.member_exps, self.runs)]
        structures = {jax.tree_util.tree_structure(s) for s in states}
        if len(structures) != 1:
            raise ConfigError(f"sweep group {self.name}: member states differ in structure "
                              "(mixing clip kinds other than none/global_norm?)")
        return self.layout.put(stack(states + states[:1] * (self.n_pad - self.n)),
                               self.layout.stacked)

    def _unpadded(self, state):
        """The real members only (what a checkpoint holds, whatever the device count)."""
        if self.n_pad == self.n:
            return state
        if not hasattr(self, "_unpad_fn"):  # one compile per group, not per checkpoint
            self._unpad_fn = jax.jit(lambda t: jax.tree_util.tree_map(lambda x: x[:self.n], t),
                                     out_shardings=self.layout.replicated)
        return self._unpad_fn(state)

    def _padded(self, state):
        """Members back to the padded, sharded layout (copies of member 0 at the end)."""
        if self.n_pad == self.n:
            return state
        extra = self.n_pad - self.n
        return jax.jit(lambda t: jax.tree_util.tree_map(
            lambda x: jnp.concatenate([x, jnp.repeat(x[:1], extra, axis=0)]), t),
            out_shardings=self.layout.stacked)(state)

    def _write_member_configs(self, start: int) -> None:
        if not self.writer:
            return
        for cfg, w in zip(self.configs, self.workdirs):
            os.makedirs(w, exist_ok=True)
            wd.write_json(wd.path(w, wd.CONFIG), cfg.to_dict())
            wd.truncate_jsonl(wd.path(w, wd.METRICS), start)
            # A group that starts at step 0 measures the step-0 spectrum again: drop an old one.
            wd.truncate_jsonl(wd.path(w, wd.SPECTRA), start if start else -1)

    # ------------------------------------------------------------------ the loop
    def run(self, progress: Callable[[str, int, int, dict], None] | None = None) -> list[dict]:
        os.makedirs(self.group_dir, exist_ok=True)
        lock = WorkdirLock(self.group_dir) if self.writer else contextlib.nullcontext()
        with lock, SignalGuard() as guard:
            ckpt = Checkpointer(os.path.join(self.group_dir, wd.CHECKPOINTS),
                                every_steps=self.runs[0].checkpoint.every_steps,
                                every_minutes=self.runs[0].checkpoint.every_minutes,
                                keep=self.runs[0].checkpoint.keep)
            try:
                return self._run(guard, ckpt, progress)
            finally:
                ckpt.close()

    def _run(self, guard, ckpt: Checkpointer, progress) -> list[dict]:
        exp, runs, tr, layout = self.exp, self.runs, self.runs[0].train, self.layout
        n = len(runs)
        state = self.init_states()
        elapsed = 0.0
        if ckpt.steps():
            restored, meta = ckpt.restore(self._unpadded(state))
            state = self._padded(restored)
            elapsed = meta.get("wall_time_s", 0.0)
        start = int(to_host(state["step"])[0])
        self._write_member_configs(start)
        statuses = [MemberStatus() for _ in range(n)]
        for i, d in enumerate(to_host(state["diverged_at"])[:n]):
            if d >= 0:
                statuses[i] = MemberStatus("diverged", int(d))

        shardings = {} if layout.mesh is None else {
            "in_shardings": layout.stacked, "out_shardings": layout.stacked}
        train_step = jax.jit(jax.vmap(make_train_step(exp, layout=layout)), donate_argnums=0,
                             **shardings)
        eval_fn = jax.jit(jax.vmap(make_eval_fn(exp, layout=layout), in_axes=(0, 0, None, None)))
        monitor = self._monitor()
        if monitor:  # compiles in a thread while the group trains (see prepare_in_background)
            monitor.prepare_in_background(state["params"], stacked=True)
        t0 = time.perf_counter() - elapsed
        if start == 0:
            ckpt.save(0, self._unpadded(state), {"wall_time_s": 0.0})
            if monitor:  # measured once the monitor is ready, for the members running now
                monitor.hold(state["params"], self._running(statuses))

        def flush_step0(due: bool = True):
            """Write the step-0 spectra rows once the monitor hands them over; always before
            any later row, any checkpoint and the end of the group."""
            held = monitor.take_held(due) if monitor else None
            if held is not None:
                params0, members = held
                self._write_spectra(monitor, layout.put(params0, layout.stacked), 0, members)

        step, interrupted, last_eval = start, False, None
        while step < tr.steps and any(s.status == "running" for s in statuses):
            state, metrics = train_step(state)
            step += 1
            last = step == tr.steps
            flush_step0(due=False)  # as soon as the monitor is ready
            now = time.perf_counter() - t0
            rows = [[] for _ in range(n)]
            log_now = step % tr.log_every == 0 or last
            due, requested = ckpt.due(step), guard.requested is not None
            if jax.process_count() > 1:  # every process must stop and save at the same step
                due = agree(due) if log_now else bool(ckpt.every_steps and step % ckpt.every_steps == 0)
                requested = agree(requested) if log_now else False
            if log_now or requested:
                host = {k: v[:n] for k, v in to_host(metrics).items()}
                self._note_divergence(to_host(state["diverged_at"])[:n], statuses)
                for i in self._running(statuses):
                    rows[i].append({"step": step, "split": "train",
                                    **{k: v[i] for k, v in host.items()}, "wall_time": now})
                if progress and self.writer:
                    progress(self.name, step, tr.steps, self._progress_info(host, statuses))
            if step % tr.eval_every == 0 or last:
                ev = {k: v[:n] for k, v in to_host(eval_fn(state["params"], self.seeds, EVAL_STREAM, 0)).items()}
                last_eval = (step, ev)
                for i in self._running(statuses):
                    rows[i].append({"step": step, "split": "eval",
                                    **{k: v[i] for k, v in ev.items()}, "wall_time": now})
            for i, w in enumerate(self.workdirs):
                if rows[i] and self.writer:
                    wd.append_jsonl(wd.path(w, wd.METRICS), rows[i])
            if monitor and (step % runs[0].spectral.every == 0 or last):
                flush_step0()
                self._write_spectra(monitor, state["params"], step, self._running(statuses))
            if jax.process_count() == 1:  # a signal may have come during the writes above
                requested = guard.requested is not None
            if due or last or requested:
                flush_step0()
                ckpt.save(step, self._unpadded(state), {"wall_time_s": time.perf_counter() - t0})
            if requested and not last:
                interrupted = True
                break
        flush_step0()  # a group that stopped before the monitor was ready
        self._note_divergence(to_host(state["diverged_at"])[:n], statuses)
        if not interrupted:
            ckpt.save(step, self._unpadded(state), {"wall_time_s": time.perf_counter() - t0})
        wall = time.perf_counter() - t0
        test = to_host(evaluate(eval_fn, state["params"], self.seeds, TEST_STREAM, self.test_chunks))
        val = last_eval[1] if last_eval and last_eval[0] == step else to_host(
            eval_fn(state["params"], self.seeds, EVAL_STREAM, 0))
        num_params = count_params(member(state["params"], 0))
        summaries = []
        for i, (w, r, st) in enumerate(zip(self.workdirs, runs, statuses)):
            status = "interrupted" if interrupted and st.status == "running" else (
                "completed" if st.status == "running" else st.status)
            s = self._summary(i, r, status, st, step, {k: float(v[i]) for k, v in val.items()},
                              {k: float(v[i]) for k, v in test.items()}, wall, n, num_params)
            if self.writer:
                wd.write_json(wd.path(w, wd.SUMMARY), s)
            summaries.append(s)
        if interrupted:
            print(f"{self.name}: interrupted at step {step}; run again to resume", file=sys.stderr)
        return summaries

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _running(statuses):
        return [i for i, s in enumerate(statuses) if s.status == "running"]

    def _note_divergence(self, diverged_at, statuses) -> None:
        for i, d in enumerate(diverged_at):
            if d >= 0 and statuses[i].status == "running":
                statuses[i] = MemberStatus("diverged", int(d))
                # Same record as a single run: rows after the last good step are dropped.
                for name in (wd.METRICS, wd.SPECTRA) if self.writer else ():
                    wd.truncate_jsonl(wd.path(self.workdirs[i], name), int(d) - 1)

    @staticmethod
    def _progress_info(host: dict, statuses) -> dict:
        running = SweepGroup._running(statuses)
        losses = [float(host["loss"][i]) for i in running if math.isfinite(host["loss"][i])]
        return {"members": len(statuses), "running": len(running),
                "diverged": sum(s.status == "diverged" for s in statuses),
                "best_loss": min(losses) if losses else math.nan}

    def _monitor(self):
        if not self.runs[0].spectral.every:
            return None
        from rnn_spectra.spectral.monitor import SpectralMonitor

        return SpectralMonitor(self.exp)

    def _write_spectra(self, monitor, params, step: int, members: list[int]) -> None:
        arrays = monitor.host_arrays(params, stacked=True)
        if not self.writer:
            return
        for i in members:
            row = monitor.to_row(member(arrays, i), step)
            wd.append_jsonl(wd.path(self.workdirs[i], wd.SPECTRA), [row])

    def _summary(self, i, run: RunConfig, status, st: MemberStatus, step, val, test, wall, n,
                 num_params) -> dict:
        task = self.member_exps[i].task
        last_good = st.diverged_step - 1 if st.diverged_step is not None else step
        return {
            "status": status,
            "steps_completed": last_good,
            "target_steps": run.train.steps,
            "diverged_step": st.diverged_step,
            "last_good_step": last_good,
            "final_eval": val,
            "test": test,
            "baseline": task.baseline,
            "solved": task.solved(test),
            "num_params": num_params,
            "wall_time_s": wall,
            "sweep": {"group": self.name,
                      # relative, so a study directory can be moved or copied whole
                      "group_dir": os.path.relpath(self.group_dir, self.workdirs[i]),
                      "index": i, "members": n},
            "device": jax.devices()[0].device_kind,
            "parallel": {"mode": self.layout.mode, "devices": self.layout.size,
                         "processes": jax.process_count()},
        }


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
