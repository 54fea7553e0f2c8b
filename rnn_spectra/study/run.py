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

import contextlib
import dataclasses
import datetime
import functools
import os
import platform
import shutil
import sys
import time

import jax
from jax.experimental import multihost_utils

from rnn_spectra import config as config_lib
from rnn_spectra import workdir as wd
from rnn_spectra.errors import ConfigError, Interrupted, WorkdirError
from rnn_spectra.loop import Loop
from rnn_spectra.parallel import is_writer
from rnn_spectra.progress import StudyBar
from rnn_spectra.signals import clear_stop, stop_requested
from rnn_spectra.study import members as member_lib
from rnn_spectra.study.export import export_chosen_checkpoints
from rnn_spectra.study.grid import Member, member_config, search_of
from rnn_spectra.study.plan import PHASES, group_names, phase_members
from rnn_spectra.study.design import Preset
from rnn_spectra.study.presets import get_preset
from rnn_spectra.sweep import group_by_program
from rnn_spectra.tasks import get_task


def run_study(preset_name: str, workdir: str, *, report: bool = True,
              overrides: dict[str, str] | None = None, seed_offset: int = 0,
              workers: int | None = 1) -> dict:
    """Train the whole preset into ``workdir`` (resuming if it holds part of it); then report.

    Pilot (every setting on the pilot seeds), the grid's extension where a row's best learning
    rate is on its edge, then the confirmation (each row's chosen setting on fresh seeds).
    ``seed_offset`` shifts every seed: the same study on a disjoint set of seeds.
    ``overrides`` (``{"parallel.mode": "sweep", ...}``) apply to every member: where and how the
    study runs (``parallel.*``, ``checkpoint.*``), never what it trains. Under several processes
    every process trains, process 0 writes. ``study.seed_offset`` among ``overrides`` is the
    same as ``seed_offset``. ``workers`` > 1: each phase's groups run in that many worker
    processes (``workers.py``), with the same numbers as one process; None: one per core when
    the pilot has more than one program."""
    overrides, seed_offset = _settings(overrides or {}, seed_offset)
    preset = get_preset(preset_name)
    writer = is_writer()
    clear_stop()  # a stop asked for earlier in this process was acted on then
    _admit(workdir, preset, seed_offset, writer)
    wd.make_dir(workdir, "the study directory")
    t0 = time.perf_counter()
    record = _new_record(preset, seed_offset)
    if jax.process_count() > 1:  # the others wait until process 0 has claimed the workdir
        multihost_utils.sync_global_devices("rnn_spectra study start")
    phase = _Phase(preset, workdir, record, overrides or {}, writer)
    bar = StudyBar(quiet=not writer)  # one bar for the whole study, on the first process only
    if workers is None:  # auto: a worker per core where the pilot has more than one program
        from rnn_spectra.study.workers import default_workers

        many = len(phase.prepare(phase_members(preset, workdir, seed_offset, "pilot"))) > 1
        workers = default_workers() if many else 1
    if jax.process_count() > 1:  # the processes already split each group's members
        workers = 1
    record["workers"] = workers
    with contextlib.ExitStack() as stack:
        stack.callback(bar.close)
        if workers > 1:
            from rnn_spectra.study.workers import WorkerPool

            pool = stack.enter_context(WorkerPool(workers, train_one_group))
        for name in PHASES:  # each phase's members follow from the finished phases before it
            members = phase_members(preset, workdir, seed_offset, name)
            if workers > 1:
                pool.train_phase(phase, name, members, overrides, seed_offset, bar)
            else:
                phase.train(PHASES[name], members, bar)
    _stop_if_requested("after the last group")
    record["finished"] = datetime.datetime.now().isoformat(timespec="seconds")
    record["wall_time_s"] = time.perf_counter() - t0
    record["groups_found_done"] = phase.found_done
    if not writer:
        return record
    # after the wall time (the study's throughput is training's); only once there is a
    # confirmation to time (a run of some phases only has none)
    if jax.process_count() == 1 and "confirm" in PHASES:
        record["timing_wall_time_s"] = _time_confirmed_rows(preset, workdir, seed_offset)
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


def _time_confirmed_rows(preset: Preset, workdir: str, seed_offset: int) -> float:
    """One model of each confirmed row's chosen config, timed alone in this process while no
    worker trains (``timing.py``); W/timing.json. Its wall time (0 when every program was
    measured before)."""
    from rnn_spectra.study.timing import time_rows

    t0 = time.perf_counter()
    chosen = {}
    for m in phase_members(preset, workdir, seed_offset, "confirm"):
        chosen.setdefault(f"{m.table}|{m.row}", m)  # the row's first confirmation seed
    time_rows(workdir, {k: member_config(preset, m) for k, m in chosen.items()},
              say=lambda text: print(f"{preset.name}: {text}", file=sys.stderr))
    return time.perf_counter() - t0


def _new_record(preset: Preset, seed_offset: int) -> dict:
    return {
        "preset": preset.name, "description": preset.description,
        "preset_fields": _preset_dict(preset), "seed_offset": seed_offset,
        "members": [],  # config_hash and steps: what each member must be; `report` checks them
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": f"{platform.node()} ({jax.devices()[0].device_kind}, {os.cpu_count()} cores)",
        "jax": jax.__version__,
    }


def study_plan(preset_name: str, workdir: str, *, overrides=None, seed_offset: int = 0) -> str:
    """``study --plan``: the phases and their groups, as far as they can be known; writes nothing."""
    from rnn_spectra.study.plan import describe

    overrides, seed_offset = _settings(overrides or {}, seed_offset)
    preset = get_preset(preset_name)
    return describe(_Phase(preset, workdir, {}, overrides, False), preset, workdir, seed_offset)


def train_one_group(preset_name: str | Preset, workdir: str, phase_name: str, k: int, *, overrides=None,
                    seed_offset: int = 0, record: bool = True, bar: bool = True) -> bool:
    """``study --phase P --group K``: train group K of phase P (skipped when done, resumed when
    preempted), recording its phase's members in study.json under a lock. The phases before P
    must have finished. ``record=False``: a local worker, whose parent recorded them; ``bar=False``:
    its group's lines without a progress bar (the parent draws the study's). False when the
    group was already done."""
    overrides, seed_offset = _settings(overrides or {}, seed_offset)
    # a local worker gets the Preset itself: one made in the parent (a test's) has no name here
    preset = preset_name if isinstance(preset_name, Preset) else get_preset(preset_name)
    phase = _Phase(preset, workdir, {}, overrides, True)
    if record:
        _admit(workdir, preset, seed_offset, True, allow_partial=True)
        wd.make_dir(workdir, "the study directory")
    groups = phase.prepare(phase_members(preset, workdir, seed_offset, phase_name))
    if not 0 <= k < len(groups):
        raise WorkdirError(f"phase {phase_name} has {len(groups)} groups (0 to {len(groups) - 1}), "
                           f"not {k}; `rnn-spectra study --plan` lists them")
    if record:
        def merge(old: dict) -> dict:
            out = old or _new_record(preset, seed_offset)
            known = {r["relpath"] for r in out["members"]}
            out["members"] += [r for r in phase.recs if r["relpath"] not in known]
            return out
        wd.update_json(wd.path(workdir, "study.json"), merge)
    progress = StudyBar(quiet=not is_writer(), bar=bar)
    progress.add_phase(f"{phase_name} group {k}", 1, groups[k].cost)
    try:
        phase.train_group(groups[k], progress=progress)
    finally:
        progress.close()
    return not phase.found_done


# What a study's command line may change: where and how it runs, never what it trains.
STUDY_OVERRIDABLE = ("parallel.", "checkpoint.", "log.tensorboard", "log.wandb")


def _settings(overrides: dict[str, str], seed_offset: int) -> tuple[dict[str, str], int]:
    """(overrides, seed offset) of a study, checked: only ``STUDY_OVERRIDABLE`` keys, and one
    non-negative seed offset whether given as ``--seed-offset`` or ``--config.study.seed_offset``."""
    overrides = dict(overrides)
    offset = overrides.pop("study.seed_offset", None)  # the same as --seed-offset
    refused = [k for k in overrides if not k.startswith(STUDY_OVERRIDABLE)]
    if refused:
        raise ConfigError(f"study takes only --config.parallel.*, --config.checkpoint.*, "
                          f"--config.log.tensorboard, --config.log.wandb* and "
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


def _admit(workdir: str, preset: Preset, seed_offset: int, writer: bool,
           allow_partial: bool = False) -> None:
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
    elif os.path.isdir(workdir) and writer and (
            set(os.listdir(workdir)) - ({"study.json.lock", "runs", "groups"} if allow_partial else set())):
        # (a group started by --phase/--group beside another leaves only these before study.json)
        raise WorkdirError(f"{workdir} is not empty and holds no study.json; use a new --workdir")


@dataclasses.dataclass
class Group:
    """One compiled program of a phase: its members (indices into the phase's list), its folder
    name, its members' workdirs, and a size to schedule by (members x steps x T x H^2)."""

    index: int
    members: list[int]
    name: str
    dirs: list[str]
    cost: float


class _Phase:
    """Trains one list of members (a phase of the study) group by group, recording each in
    study.json first; finished groups are skipped, a preempted one resumes."""

    def __init__(self, preset, workdir, record, overrides, writer):
        self.preset, self.workdir, self.record = preset, workdir, record
        self.overrides, self.writer = overrides, writer
        # groups already trained when this run reached them (a resumed study, array tasks):
        # the run's wall time then measures only part of the study
        self.found_done = 0

    def prepare(self, members: list[Member]) -> list[Group]:
        """The phase's groups (the same on every run, in every process), its configs resolved."""
        self.members = members
        self.configs = [member_config(self.preset, m) for m in members]
        for c in self.configs:
            config_lib.apply_overrides(c, self.overrides)
        self.runs = [config_lib.resolve(c) for c in self.configs]
        idx_groups = group_by_program(self.runs)
        names = group_names(members, self.configs, idx_groups)
        group_of = {i: name for idx, name in zip(idx_groups, names) for i in idx}
        self.recs = [dict(relpath=m.relpath, phase=m.phase, table=m.table, task=m.task, row=m.row,
                          setting=m.setting, seed=m.seed, learning_rate=m.learning_rate,
                          clip=m.clip, clip_value=m.clip_value, init_gain=m.init_gain,
                          clip_chosen=m.clip_chosen,
                          tuned_on=m.entry.tuned_on, group=group_of[i],
                          searched=search_of(self.preset, m.variant) is not None,
                          match_params_of=m.variant.match_params_of,
                          **member_lib.record(self.configs[i])) for i, m in enumerate(members)]
        return [Group(k, idx, name, [os.path.join(self.workdir, members[i].relpath) for i in idx],
                      _cost(self.runs[idx[0]], len(idx)))
                for k, (idx, name) in enumerate(zip(idx_groups, names))]

    def record_members(self) -> None:
        """Add the phase's members to study.json (once: a resumed phase finds them there)."""
        known = {r["relpath"] for r in self.record["members"]}
        self.record["members"] += [r for r in self.recs if r["relpath"] not in known]
        if self.writer:
            wd.write_json(wd.path(self.workdir, "study.json"), self.record)

    def loop(self, group: Group, task=None) -> Loop:
        c = self.configs
        return Loop([c[i] for i in group.members], group.dirs,
                    os.path.join(self.workdir, "groups", group.name), name=group.name,
                    test_chunks=self.preset.test_chunks,
                    task=task or get_task(self.runs[group.members[0]].task))

    def train(self, label: str, members: list[Member], bar: StudyBar) -> None:
        if not members:
            return
        groups = self.prepare(members)
        # Every group is built (and its memory checked) before the first one trains: a group
        # too large for the device is one line now, not after an hour of the others. So that
        # this holds one dataset per table on the device, not one per group, they share tasks.
        task_of = functools.lru_cache(maxsize=None)(get_task)
        loops = [self.loop(g, task_of(self.runs[g.members[0]].task)) for g in groups]
        self.record_members()
        bar.line(f"{self.preset.name} {label}: {len(members)} members in {len(groups)} programs")
        bar.add_phase(label, len(groups), sum(g.cost for g in groups))
        for group, loop in zip(groups, loops):
            self.train_group(group, loop, bar)

    def train_group(self, group: Group, loop: Loop | None = None, progress: StudyBar | None = None
                    ) -> list[dict]:
        """Train one group (skipped when done, resumed when preempted, re-trained from step 0
        when a member was changed); raises Interrupted when it was stopped."""
        idx, name = group.members, group.name
        if progress is None:
            progress = StudyBar(quiet=not self.writer)
            progress.add_phase(name, 1, group.cost)
        group_dir = os.path.join(self.workdir, "groups", name)
        problems = {i: member_lib.problem(self.workdir, self.recs[i], self.preset.name) for i in idx}
        if not any(problems.values()):
            progress.skip(name, len(idx), group.cost)
            self.found_done += 1
            return []
        restart = _needs_restart(problems, group_dir)
        if restart is not None:
            i, why = restart
            progress.line(f"{name}: study member {self.members[i].relpath} {why.text}; re-training "
                          f"the group's {len(idx)} members from step 0")
            _clear_group(group_dir, group.dirs, self.writer)
        _stop_if_requested(f"before group {name}")
        progress.start(name, len(idx), group.cost)
        summaries = (loop or self.loop(group)).run(progress=progress)
        # a signal at the group's last step or final eval lets the group finish: stop after it
        if any(s["status"] == "interrupted" for s in summaries) or stop_requested():
            raise Interrupted(f"interrupted in group {name} (checkpointed); run the same command "
                              "to resume")
        return summaries


def _stop_if_requested(where: str) -> None:
    name = stop_requested()
    if name:
        raise Interrupted(f"{name} {where}; every finished group is kept: run the same command "
                          "to resume")


def _cost(run, members: int) -> float:
    """A group's work in multiply-adds, up to a constant: members x steps x T x H^2 (x4 gates
    for the LSTM, x3 for the GRU); what the workers schedule by, largest first."""
    gates = {"lstm": 4, "gru": 3}.get(run.model.cell, 1)
    return float(members * run.train.steps * run.task.seq_len * gates * run.model.hidden_size ** 2)


def _needs_restart(problems: dict, group_dir: str):
    """(member, problem) that makes resuming the group wrong, or None to resume it (or start it).

    A group resumes from its last stacked checkpoint only while its members are what an
    interrupted group leaves: every one unfinished with the study's config. A member that was
    changed (extended, edited) or is incomplete, one deleted after the group started, or a mix
    of finished and unfinished members cannot be continued: the stacked checkpoint would give
    the deleted member a summary without its metrics and spectra, or keep the edited one."""
    started = bool(wd.checkpoint_steps(os.path.join(group_dir, wd.CHECKPOINTS)))
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
    if not d["choose_clip"]:  # a field added later, at its off value: the design hash stays
        del d["choose_clip"]  # the one its published claims were checked under
    d["variants"] = [v.name for v in p.variants]
    d["tasks"] = [t.table for t in p.tasks]
    return d
