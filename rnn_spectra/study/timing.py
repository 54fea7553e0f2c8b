"""One model's seconds per training step, measured alone: what "seconds to a target" multiplies.

A vmapped group's clock says what the group cost, not what one model costs: 32 ReLU members in
one program are not 32 times one, and a group's wall time includes its compiles, evaluations and
spectra. So after the confirmation ``run_study`` trains, for each confirmed row, one member of
its chosen config by itself: the plain train step (``train.make_train_step``, no vmap), jitted on
one device, warmed up (the compile and a few steps excluded), then timed over ``BLOCKS`` blocks
of steps that each take at least ``BLOCK_S`` seconds; the fastest block counts (the others were
slowed by whatever else ran on the machine: ``timeit``'s rule). Training steps only, without the
evaluations, logging or spectra a run adds.

Rows whose configs share a compiled program (``sweep.program_signature``: they differ only in
seed, init, learning rate or clip threshold) cost the same per step, so each program is measured
once, on the first row that has it, and the rows share its number. ``W/timing.json`` keeps the
measurements with the machine they ran on; a program already there is not measured again (a
resumed study), and nothing here touches a member's numbers.
"""

from __future__ import annotations

import datetime
import hashlib
import math
import os
import platform
import time

from rnn_spectra import workdir as wd

TIMING = "timing.json"
WARMUP = 3  # steps after the compiling one, before any is timed
BLOCK_S = 0.1  # each timed block at least this long, so the clock's resolution does not matter
BLOCKS = 3


def _machine() -> str:
    import jax

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count()
    device = jax.devices()[0]
    return (f"{platform.node()} ({device.device_kind}, {device.platform}; this process may use "
            f"{cores} of {os.cpu_count()} cores)")


def program_key(run) -> str:
    from rnn_spectra.sweep import program_signature

    return hashlib.sha256(repr(program_signature(run)).encode()).hexdigest()[:16]


def seconds_per_step(run, task=None) -> dict:
    """Train one model of ``run`` (a RunConfig) alone and time its steps: ``seconds_per_step``
    (the fastest block's mean), ``blocks`` (every block's), ``steps_per_block``."""
    import jax

    from rnn_spectra import control
    from rnn_spectra.train import build, init_state, make_train_step

    exp = build(run, task)
    with control.lapack_threads(run):
        step = jax.jit(make_train_step(exp), donate_argnums=0)
        state = init_state(exp, run.seed)
        for _ in range(1 + WARMUP):  # the first call compiles
            state, _ = step(state)
        jax.block_until_ready(state)
        t0 = time.perf_counter()
        state, _ = step(state)
        jax.block_until_ready(state)
        n = max(1, math.ceil(BLOCK_S / max(time.perf_counter() - t0, 1e-6)))
        blocks = []
        for _ in range(BLOCKS):
            t0 = time.perf_counter()
            for _ in range(n):
                state, _ = step(state)
            jax.block_until_ready(state)
            blocks.append((time.perf_counter() - t0) / n)
    return {"seconds_per_step": min(blocks), "blocks": blocks, "steps_per_block": n}


def time_rows(workdir: str, rows: dict[str, object], *, say=None) -> dict:
    """Measure every row of ``rows`` (row key -> its chosen member's ConfigDict) whose program
    ``W/timing.json`` does not hold yet, write it, and return it."""
    from rnn_spectra import config as config_lib
    from rnn_spectra.study import members as member_lib
    from rnn_spectra.tasks import get_task

    path = wd.path(workdir, TIMING)
    old = wd.read_json(path) if os.path.isfile(path) else {}
    programs = dict(old.get("programs") or {})
    record = {**old, "what": "seconds per training step of one model alone on one device (no "
                             "vmap; compile and warm-up excluded; fastest of the timed blocks)",
              "programs": programs, "rows": {}}
    tasks, t0 = {}, time.perf_counter()
    for key, config in rows.items():
        run = config_lib.resolve(config)
        prog = program_key(run)
        record["rows"][key] = {"program": prog, "config_hash": member_lib.config_hash(config)}
        if prog in programs:
            continue
        if say and len(programs) == len(old.get("programs") or {}):
            say(f"timing one model of each confirmed row alone ({len(rows)} rows)")
        if repr(run.task) not in tasks:  # one dataset per task (an image task loads its own)
            tasks[repr(run.task)] = get_task(run.task)
        task = tasks[repr(run.task)]
        programs[prog] = {"first_row": key, **seconds_per_step(run, task), "machine": _machine(),
                          "measured": datetime.datetime.now().isoformat(timespec="seconds")}
        record["machine"] = programs[prog]["machine"]  # the last measurement's
        record["wall_time_s"] = (old.get("wall_time_s") or 0.0) + time.perf_counter() - t0
        wd.write_json(path, record)  # each program as it is measured: a stopped study resumes
    if rows and record != old:
        wd.write_json(path, record)
    return record


def row_seconds(timing: dict | None, key: str) -> float | None:
    """Seconds per step of the row ``key`` ('table|row') from a timing.json, None if unmeasured."""
    if not timing:
        return None
    prog = (timing.get("rows") or {}).get(key, {}).get("program")
    got = (timing.get("programs") or {}).get(prog)
    return None if got is None else got.get("seconds_per_step")


def read_timing(workdir: str) -> dict | None:
    path = wd.path(workdir, TIMING)
    return wd.read_json(path) if os.path.isfile(path) else None
