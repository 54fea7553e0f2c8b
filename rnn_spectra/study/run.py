"""The study: every variant of the question (tanh vs ReLU vs gated; init; clipping; SGD vs
Adam) on long-range tasks, each at its own chosen hyperparameters, trained as vmapped sweeps;
then the report.

``run_study(preset, workdir)`` runs three phases, each expanded into member configs (``grid.py``),
grouped by program (``sweep.py``) and trained group by group (``loop.Loop``): the pilot (every
setting on the pilot seeds), the grid's extension (one learning rate past the edge where a row's
best sits on it), the confirmation (each row's chosen setting on fresh seeds). It writes
``W/study.json`` plus one ordinary workdir per member under ``W/runs/<phase>/``. Re-running the
same command resumes: finished groups are skipped, a preempted group continues from its last
stacked checkpoint, and the choices are recomputed from the finished pilot (so they are the same).
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import math
import os
import platform
import sys
import time

import jax
from jax.experimental import multihost_utils

from rnn_spectra import config as config_lib
from rnn_spectra import workdir as wd
from rnn_spectra.errors import ConfigError, Interrupted, WorkdirError
from rnn_spectra.cells import program_name
from rnn_spectra.loop import Loop
from rnn_spectra.parallel import is_writer
from rnn_spectra.runs import load_run
from rnn_spectra.study import members as member_lib
from rnn_spectra.study.grid import Member, confirmation, expand, extension, member_config
from rnn_spectra.study.presets import Preset, get_preset
from rnn_spectra.sweep import export_member_checkpoints, group_by_program
from rnn_spectra.tasks import get_task


def _group_name(m: Member, cfg) -> str:
    clip = "global_norm" if cfg.optim.clip == "none" else cfg.optim.clip
    size = f"_H{cfg.model.hidden_size}" if m.variant.match_params_of else ""
    # an arm's tags that the optimizer and size do not already say (an intervention: lyapunov)
    tags = [t for t in m.variant.name.split("/")[2:] if t != cfg.optim.name and "=" not in t]
    arm = "".join(f"_{t}" for t in tags)
    return f"{m.phase}/{m.table}/{program_name(cfg.model.cell)}{size}{arm}_{cfg.optim.name}_{clip}"


def _group_names(members: list[Member], configs, groups: list[list[int]]) -> list[str]:
    """One folder name per group, unique within the phase: two programs that the name's parts do
    not tell apart get _2, _3 (in first-seen order, the same on every run), never one folder."""
    names, seen = [], {}
    for idx in groups:
        name = _group_name(members[idx[0]], configs[idx[0]])
        seen[name] = seen.get(name, 0) + 1
        names.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return names


class Console:
    """One status line per group on stderr: which programs, step, best loss, ETA."""

    def __init__(self, total_groups: int):
        self.total, self.index, self.t0 = total_groups, 0, time.perf_counter()
        self.group_t0 = self.t0

    def start(self, name: str, members: int) -> None:
        self.index += 1
        self.group_t0 = time.perf_counter()
        if not is_writer():  # one console for a multi-process study
            return
        print(f"[{self.index}/{self.total}] {name}: {members} members in one program",
              file=sys.stderr, flush=True)

    def __call__(self, name, step, steps, info) -> None:
        spent = time.perf_counter() - self.group_t0
        eta = spent / step * (steps - step) if step else math.nan
        print(f"\r  step {step}/{steps}  best loss {info['best_loss']:.4g}  "
              f"running {info['running']}/{info['members']}  diverged {info['diverged']}  "
              f"ETA {eta:.0f}s   ", end="" if step < steps else "\n", file=sys.stderr, flush=True)


def run_study(preset_name: str, workdir: str, *, report: bool = True,
              overrides: dict[str, str] | None = None, seed_offset: int = 0) -> dict:
    """Train the whole preset into ``workdir`` (resuming if it holds part of it); then report.

    Pilot (every setting on the pilot seeds), the grid's extension where a row's best learning
    rate is on its edge, then the confirmation (each row's chosen setting on fresh seeds).
    ``seed_offset`` shifts every seed: the same study on a disjoint set of seeds.
    ``overrides`` (``{"parallel.mode": "sweep", ...}``) apply to every member: where and how the
    study runs (``parallel.*``, ``checkpoint.*``), never what it trains. Under several processes
    every process trains, process 0 writes. ``study.seed_offset`` among ``overrides`` is the
    same as ``seed_offset``."""
    overrides, seed_offset = _settings(overrides or {}, seed_offset)
    preset = get_preset(preset_name)
    writer = is_writer()
    _admit(workdir, preset, seed_offset, writer)
    os.makedirs(workdir, exist_ok=True)
    t0 = time.perf_counter()
    record = {
        "preset": preset.name, "description": preset.description,
        "preset_fields": _preset_dict(preset), "seed_offset": seed_offset,
        "members": [],  # config_hash and steps: what each member must be; `report` checks them
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": f"{platform.node()} ({jax.devices()[0].device_kind}, {os.cpu_count()} cores)",
        "jax": jax.__version__,
    }
    if jax.process_count() > 1:  # the others wait until process 0 has claimed the workdir
        multihost_utils.sync_global_devices("rnn_spectra study start")
    phase = _Phase(preset, workdir, record, overrides or {}, writer)
    pilot = expand(preset, seed_offset)
    phase.train("pilot", pilot)
    best = _best(workdir, pilot)
    if preset.extend_grid:
        extra = [m for b in best.values() for m in extension(preset, b, seed_offset)]
        if extra:
            phase.train("grid extension", extra)
            best = _best(workdir, pilot + extra)
    phase.train("confirmation", [m for b in best.values() for m in confirmation(preset, b, seed_offset)])
    record["finished"] = datetime.datetime.now().isoformat(timespec="seconds")
    record["wall_time_s"] = time.perf_counter() - t0
    if not writer:
        return record
    wd.write_json(wd.path(workdir, "study.json"), record)
    from rnn_spectra.study.report import write_report

    if jax.process_count() == 1:
        export_chosen_checkpoints(workdir)
    else:
        print(f"{workdir}: run `rnn-spectra report --workdir {workdir}` as one process to give "
              "the chosen members their own checkpoints for `analyze` and the notebooks",
              file=sys.stderr)
    if report:
        write_report(workdir)
    return record


# What a study's command line may change: where and how it runs, never what it trains.
STUDY_OVERRIDABLE = ("parallel.", "checkpoint.")


def _settings(overrides: dict[str, str], seed_offset: int) -> tuple[dict[str, str], int]:
    """(overrides, seed offset) of a study, checked: only ``STUDY_OVERRIDABLE`` keys, and one
    non-negative seed offset whether given as ``--seed-offset`` or ``--config.study.seed_offset``."""
    overrides = dict(overrides)
    offset = overrides.pop("study.seed_offset", None)  # the same as --seed-offset
    refused = [k for k in overrides if not k.startswith(STUDY_OVERRIDABLE)]
    if refused:
        raise ConfigError(f"study takes only --config.parallel.*, --config.checkpoint.* and "
                          f"--config.study.seed_offset overrides (the grid is the preset's), not "
                          f"--config.{refused[0]}")
    if offset is not None:
        try:
            offset = int(offset)
        except ValueError:
            raise ConfigError(f"--config.study.seed_offset must be a non-negative integer, got "
                              f"{offset!r}") from None
        if seed_offset not in (0, offset):
            raise ConfigError(f"--seed-offset {seed_offset} and --config.study.seed_offset="
                              f"{offset} disagree; give one")
        seed_offset = offset
    if seed_offset < 0:
        raise ConfigError(f"--seed-offset must be a non-negative integer, got {seed_offset}")
    return overrides, seed_offset


def _admit(workdir: str, preset: Preset, seed_offset: int, writer: bool) -> None:
    study_path = wd.path(workdir, "study.json")
    if os.path.exists(study_path):
        old = wd.read_json(study_path)
        if not isinstance(old, dict):
            raise WorkdirError(f"{study_path} is damaged (not a JSON object); use a new --workdir")
        if old.get("preset") != preset.name:
            raise WorkdirError(f"{workdir} holds a study of preset {old.get('preset')!r}, not "
                               f"{preset.name!r}; use another --workdir")
        if old.get("seed_offset", 0) != seed_offset:
            raise WorkdirError(f"{workdir} holds a study with seed offset {old.get('seed_offset', 0)}, "
                               f"not {seed_offset}; use another --workdir")
    elif os.path.isdir(workdir) and os.listdir(workdir) and writer:
        raise WorkdirError(f"{workdir} is not empty and holds no study.json; use a new --workdir")


def _best(workdir: str, members: list[Member]) -> dict[tuple[str, str], Member]:
    """Each row's chosen setting (``results.choose_best``: validation loss of the pilot seeds)."""
    from rnn_spectra.study.results import choose_best

    by_path = {m.relpath: m for m in members}
    loaded = [{"relpath": m.relpath, "table": m.table, "row": m.row, "setting": m.setting,
               "summary": wd.read_json(wd.path(os.path.join(workdir, m.relpath), wd.SUMMARY))}
              for m in members]
    return {key: by_path[seeds[0]["relpath"]] for key, seeds in choose_best(loaded).items()}


class _Phase:
    """Trains one list of members (a phase of the study) group by group, recording each in
    study.json first; finished groups are skipped, a preempted one resumes."""

    def __init__(self, preset, workdir, record, overrides, writer):
        self.preset, self.workdir, self.record = preset, workdir, record
        self.overrides, self.writer = overrides, writer

    def train(self, label: str, members: list[Member]) -> None:
        preset, workdir, record, writer = self.preset, self.workdir, self.record, self.writer
        if not members:
            return
        configs = [member_config(preset, m) for m in members]
        for c in configs:
            config_lib.apply_overrides(c, self.overrides)
        runs = [config_lib.resolve(c) for c in configs]
        groups = group_by_program(runs)
        names = _group_names(members, configs, groups)
        group_of = {i: name for idx, name in zip(groups, names) for i in idx}
        # Every group is built (and its memory checked) before the first one trains: a group
        # too large for the device is one line now, not after an hour of the others. So that
        # this holds one dataset per table on the device, not one per group, they share tasks.
        task_of = functools.lru_cache(maxsize=None)(get_task)
        dirs = [[os.path.join(workdir, members[i].relpath) for i in idx] for idx in groups]
        loops = [Loop([configs[i] for i in idx], d, os.path.join(workdir, "groups", name), name=name,
                      test_chunks=preset.test_chunks, task=task_of(runs[idx[0]].task))
                 for idx, d, name in zip(groups, dirs, names)]
        recs = [dict(relpath=m.relpath, phase=m.phase, table=m.table, task=m.task, row=m.row,
                     setting=m.setting, seed=m.seed, learning_rate=m.learning_rate, clip=m.clip,
                     clip_value=m.clip_value, group=group_of[i],
                     match_params_of=m.variant.match_params_of,
                     **member_lib.record(configs[i])) for i, m in enumerate(members)]
        record["members"] += recs
        if writer:
            wd.write_json(wd.path(workdir, "study.json"), record)
        if writer:
            print(f"{preset.name} {label}: {len(members)} members in {len(groups)} programs",
                  file=sys.stderr, flush=True)
        console = Console(len(groups))
        for idx, name, member_dirs, group in zip(groups, names, dirs, loops):
            group_dir = os.path.join(workdir, "groups", name)
            problems = {i: member_lib.problem(workdir, recs[i], preset.name) for i in idx}
            if not any(problems.values()):
                console.start(name + " (done, skipped)", len(idx))
                continue
            restart = _needs_restart(problems, group_dir)
            if restart is not None:
                i, why = restart
                if writer:
                    print(f"{name}: study member {members[i].relpath} {why.text}; re-training the "
                          f"group's {len(idx)} members from step 0", file=sys.stderr, flush=True)
                _clear_group(group_dir, member_dirs, writer)
            console.start(name, len(idx))
            summaries = group.run(progress=console)
            if any(s["status"] == "interrupted" for s in summaries):
                raise Interrupted(f"interrupted in group {name} (checkpointed); run the same command "
                                  "to resume")


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
        if run.steps:
            continue
        sweep = run.summary["sweep"]
        group_dir = os.path.normpath(os.path.join(run.workdir, sweep["group_dir"]))
        by_group.setdefault(group_dir, {})[sweep["index"]] = run
    for group_dir, members in by_group.items():
        run = next(iter(members.values()))
        one = init_state(run.experiment, 0)
        template = jax.tree_util.tree_map(lambda x: jnp.stack([x] * run.summary["sweep"]["members"]), one)
        export_member_checkpoints(group_dir, template, {i: r.workdir for i, r in members.items()})


def _needs_restart(problems: dict, group_dir: str):
    """(member, problem) that makes resuming the group wrong, or None to resume it (or start it).

    A group resumes from its last stacked checkpoint only while its members are what an
    interrupted group leaves: every one unfinished with the study's config. A member that was
    changed (extended, edited) or is incomplete, one deleted after the group started, or a mix
    of finished and unfinished members cannot be continued: the stacked checkpoint would give
    the deleted member a summary without its metrics and spectra, or keep the edited one."""
    started = os.path.isdir(os.path.join(group_dir, wd.CHECKPOINTS)) and any(
        n.isdigit() for n in os.listdir(os.path.join(group_dir, wd.CHECKPOINTS)))
    for i, p in problems.items():
        if p is not None and (not p.not_trained or (p.kind == "missing" and started)):
            return i, p
    finished = [i for i, p in problems.items() if p is None]
    if finished and started:
        unfinished = next(i for i, p in problems.items() if p is not None)
        return unfinished, problems[unfinished]
    return None


def _clear_group(group_dir: str, member_dirs: list[str], writer: bool) -> None:
    """Re-train a group from scratch: remove its stacked checkpoints and its members' workdirs.

    From scratch, not from the group's step-0 checkpoint: simpler, and just as exact (a member's
    numbers depend only on its config and seed), at the cost of the group's training time."""
    import shutil

    if jax.process_count() > 1:  # every process has decided before anything is removed
        multihost_utils.sync_global_devices("rnn_spectra study clear group (decided)")
    if writer:
        for d in [group_dir, *member_dirs]:
            if os.path.isdir(d):
                shutil.rmtree(d)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("rnn_spectra study clear group (done)")


def _preset_dict(p: Preset) -> dict:
    d = dataclasses.asdict(p)
    d["variants"] = [v.name for v in p.variants]
    d["tasks"] = [t.table for t in p.tasks]
    return d
