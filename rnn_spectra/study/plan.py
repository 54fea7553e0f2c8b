"""A study as units of work: its phases, each a set of independent groups (one compiled program
each), and what each phase's members are. The pilot's members follow from the preset; the
grid's extension and the confirmation from the finished phases before them (each row's chosen
setting), so a phase can be planned only once those have finished.

``rnn-spectra study --plan`` prints this; ``--phase P --group K`` trains one group (what a
cluster's array task runs); the whole study runs the phases in order.
"""

from __future__ import annotations

import os

from rnn_spectra import workdir as wd
from rnn_spectra.cells import program_name
from rnn_spectra.errors import WorkdirError
from rnn_spectra.study.grid import Member, confirmation, expand, extension
from rnn_spectra.study.design import Preset

# phase name (as in Member.phase and W/runs/<phase>/) -> what the console calls it
PHASES = {"pilot": "pilot", "extend": "grid extension", "confirm": "confirmation"}


def _group_name(m: Member, cfg) -> str:
    clip = "global_norm" if cfg.optim.clip == "none" else cfg.optim.clip
    size = f"_H{cfg.model.hidden_size}" if m.variant.match_params_of else ""
    # an arm's tags that the optimizer and size do not already say (an intervention: lyapunov)
    tags = [t for t in m.variant.name.split("/")[2:] if t != cfg.optim.name and "=" not in t]
    arm = "".join(f"_{t}" for t in tags)
    return f"{m.phase}/{m.table}/{program_name(cfg.model.cell)}{size}{arm}_{cfg.optim.name}_{clip}"


def group_names(members: list[Member], configs, groups: list[list[int]]) -> list[str]:
    """One folder name per group, unique within the phase: two programs that the name's parts do
    not tell apart get _2, _3 (in first-seen order, the same on every run), never one folder."""
    names, seen = [], {}
    for idx in groups:
        name = _group_name(members[idx[0]], configs[idx[0]])
        seen[name] = seen.get(name, 0) + 1
        names.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return names


def _best(workdir: str, members: list[Member]) -> dict[tuple[str, str], Member]:
    """Each row's chosen setting (``results.choose_best``: validation loss of the pilot seeds)."""
    from rnn_spectra.study.results import choose_best

    by_path = {m.relpath: m for m in members}
    loaded = []
    for m in members:
        path = wd.path(os.path.join(workdir, m.relpath), wd.SUMMARY)
        if not os.path.isfile(path):
            raise WorkdirError(f"{workdir}: {m.relpath} has not finished; the {m.phase} phase must "
                               "finish before the next is planned or trained")
        loaded.append({"relpath": m.relpath, "table": m.table, "row": m.row, "setting": m.setting,
                       "summary": wd.read_json(path)})
    return {key: by_path[seeds[0]["relpath"]] for key, seeds in choose_best(loaded).items()}


def phase_members(preset: Preset, workdir: str, seed_offset: int, phase: str) -> list[Member]:
    """The members of ``phase``; for the extension and the confirmation the phases before it
    must have finished (else a one-line WorkdirError)."""
    if phase not in PHASES:
        raise WorkdirError(f"unknown phase {phase!r}; valid: {', '.join(PHASES)}")
    pilot = expand(preset, seed_offset)
    if phase == "pilot":
        return pilot
    best = _best(workdir, pilot)
    extra = ([m for b in best.values() for m in extension(preset, b, seed_offset)]
             if preset.extend_grid else [])
    if phase == "extend":
        return extra
    if extra:
        best = _best(workdir, pilot + extra)
    return [m for b in best.values() for m in confirmation(preset, b, seed_offset)]


def describe(phase_obj, preset: Preset, workdir: str, seed_offset: int) -> str:
    """The plan as text: per phase its groups (index, name, members, relative cost, done?), or
    why it cannot be planned yet."""
    from rnn_spectra.study import members as member_lib

    lines = [f"study {preset.name} in {workdir} (seeds + {seed_offset}); cost: members x steps x "
             "T x H^2 x gates, relative to the largest group"]
    for name, label in PHASES.items():
        try:
            members = phase_members(preset, workdir, seed_offset, name)
        except WorkdirError:
            lines.append(f"{name} ({label}): planned once the phases before it have finished")
            continue
        groups = phase_obj.prepare(members) if members else []
        lines.append(f"{name} ({label}): {len(members)} members in {len(groups)} groups")
        top = max((g.cost for g in groups), default=1.0)
        for g in groups:
            done = not any(member_lib.problem(workdir, phase_obj.recs[i], preset.name)
                           for i in g.members)
            lines.append(f"  --phase {name} --group {g.index}: {g.name}, {len(g.members)} members, "
                         f"cost {g.cost / top:.2f}" + (" (done)" if done else ""))
    return "\n".join(lines)
