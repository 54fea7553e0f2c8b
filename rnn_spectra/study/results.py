"""The study's results from its workdir alone: each row a variant at its own best setting.

Each table row is a variant (cell / init / clipping) at its *own* best setting (learning rate,
clip threshold; the clipping mode itself where the preset chooses it), chosen by mean validation
loss over the pilot seeds; the numbers quoted are the
confirmation seeds' losses on a separate test set, with 95% t-intervals (``stats.py``). No number in a row is
one that chose it. Members are opened with ``runs.load_run``, like any run.
"""

from __future__ import annotations

import math
import os
import sys
from collections import defaultdict

import numpy as np

from rnn_spectra import workdir as wd
from rnn_spectra.errors import WorkdirError
from rnn_spectra.runs import load_run
from rnn_spectra.study import members as member_lib
from rnn_spectra.spectral.rows import init_end_summary, lyapunov_top, sigma_max
from rnn_spectra.study.claims import design_hash
from rnn_spectra.study.criteria import instability_events, still_learning
from rnn_spectra.study.match_gate import row_columns
from rnn_spectra.study.predictors import predictor_table
from rnn_spectra.study.stats import mean_ci, sample_sd
from rnn_spectra.study import time_to_target, timing
from rnn_spectra.tasks import solved_rule

# ----------------------------------------------------------------------------- loading


def load_members(workdir: str) -> tuple[dict, list[dict]]:
    """study.json and, per member, its record + summary + metrics + spectra rows."""
    study_path = wd.path(workdir, "study.json")
    if not os.path.exists(study_path):
        raise WorkdirError(f"{workdir} is not a study (no study.json); run `rnn-spectra study` first")
    study = wd.read_json(study_path)
    records = study.get("members") if isinstance(study, dict) else None
    if not isinstance(records, list) or not all(
            isinstance(r, dict) and isinstance(r.get("relpath"), str) for r in records):
        raise WorkdirError(f"{study_path} is damaged (no list of members with their relpath); "
                           f"re-run the `rnn-spectra study` command that made {workdir} to "
                           "rewrite it")
    # A finished study must have every member as it trained it; an interrupted one reports
    # what it has, but never a member that was changed since.
    finished, bad, members = "finished" in study, [], []
    for rec in records:
        d = os.path.join(workdir, rec["relpath"])
        if "config_hash" in rec:
            p = member_lib.problem(workdir, rec, study.get("preset"))
            if p is not None:
                if not (p.not_trained and not finished):
                    bad.append((rec["relpath"], p))
                continue
        elif not _finished(d):  # a study.json from before the config hashes: nothing to check
            continue  # not trained yet (an interrupted study reports what it has)
        run = load_run(d)
        cfg = run.config
        lyap = cfg.control.lyapunov if "control" in cfg else None
        members.append({**rec, "dir": d, "summary": run.summary, "metrics": run.metrics,
                        "spectra": run.spectra, "optimizer": cfg.optim.name,
                        "hidden_size": cfg.model.hidden_size,
                        "lyapunov_target": lyap.target if lyap is not None and lyap.weight > 0 else None,
                        "lyapunov_control": lyap.to_dict() if lyap is not None and lyap.weight > 0
                        else None})
    if bad:
        (rel, p), more = bad[0], len(bad) - 1
        raise WorkdirError(
            f"study member {rel} {p.text}" + (f" (and {more} other members)" if more else "")
            + f"; the report would mix it with the others: re-run `rnn-spectra study --preset "
            f"{study.get('preset')} --workdir {workdir}` (the same command) to re-train its group")
    if not members:
        raise WorkdirError(f"{workdir}: no member has finished yet; nothing to report")
    if not finished:
        print(f"{workdir}: the study has not finished; reporting {len(members)} of "
              f"{len(records)} members", file=sys.stderr)
    return study, members


def _finished(member_dir: str) -> bool:
    path = wd.path(member_dir, wd.SUMMARY)
    if not os.path.exists(path):
        return False
    summary = wd.read_json(path)
    return isinstance(summary, dict) and summary.get("status") in member_lib.FINISHED


# ----------------------------------------------------------------------------- selection


def _eval_rows(m: dict) -> list[dict]:
    return [r for r in m["metrics"] if r.get("split") == "eval"]


def _val_loss(m: dict) -> float:
    v = _num(m["summary"].get("final_eval", {}).get("loss", math.inf))
    return v if isinstance(v, (int, float)) and math.isfinite(v) else math.inf


def choose_best(members: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """(table, row) -> the seeds of the setting with the lowest mean validation loss."""
    by_setting: dict[tuple[str, str], dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for m in members:
        by_setting[(m["table"], m["row"])][m["setting"]].append(m)
    best = {}
    for key, settings in by_setting.items():
        # Fewer diverged seeds first, then lower mean validation loss (never test data).
        def rank(item):
            seeds = item[1]
            diverged = sum(s["summary"]["status"] == "diverged" for s in seeds)
            return (diverged / len(seeds), float(np.mean([_val_loss(s) for s in seeds])), item[0])

        best[key] = min(settings.items(), key=rank)[1]
    return best


# ----------------------------------------------------------------------------- one row


def _first_step(m: dict, predicate) -> tuple[int | None, float | None]:
    for r in _eval_rows(m):
        if predicate(r):
            return r["step"], r.get("wall_time")
    return None, None


def _num(v):
    """A recorded number: JSON keeps NaN and infinities as strings ("nan", "-inf")."""
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return None
    return v


def _stat(values: list[float]) -> tuple[float | None, float | None]:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return None, None
    return float(np.mean(vals)), sample_sd(vals)  # ddof=1: few seeds


def summarise(table: str, row: str, seeds: list[dict], target_fractions: tuple[float, ...],
              seconds_per_step: float | None = None) -> dict:
    """One row over its seeds; ``seconds_per_step``: one model's, measured alone (timing.py)."""
    task = seeds[0].get("task") or table.split("_T")[0]  # study.json records before "task" existed
    s0 = seeds[0]["summary"]
    baseline = s0["baseline"]
    test_losses = [_num(m["summary"].get("test", {}).get("loss", math.nan)) for m in seeds]
    test_acc = [_num(m["summary"].get("test", {}).get("accuracy")) for m in seeds]
    solved_pred = lambda r: solved_rule(task)(r, baseline)  # noqa: E731 - the task's own rule
    # Over the seeds that pass the test-set criterion: their first validation eval that passes it.
    solve_steps = [_first_step(m, solved_pred)[0] for m in seeds if m["summary"].get("solved")]
    sig0 = [sigma_max(m["spectra"][0]) if m["spectra"] else None for m in seeds]
    sig1 = [sigma_max(m["spectra"][-1]) if m["spectra"] else None for m in seeds]
    lam0 = [lyapunov_top(m["spectra"][0]) if m["spectra"] else None for m in seeds]
    lam1 = [lyapunov_top(m["spectra"][-1]) if m["spectra"] else None for m in seeds]
    loss_mean, loss_sd = _stat(test_losses)
    acc_mean, acc_sd = _stat(test_acc)
    steps = [m["summary"].get("steps_completed") for m in seeds]
    learning = [m["summary"]["status"] == "completed"
                and still_learning(_eval_rows(m), int(n), baseline) for m, n in zip(seeds, steps) if n]
    events = [instability_events([r for r in m["metrics"] if r.get("split") == "train"])
              + (m["summary"]["status"] == "diverged") for m in seeds]
    return {
        "table": table,
        "task": task,
        "variant": row,
        "setting": seeds[0]["setting"],
        "learning_rate": seeds[0]["learning_rate"],
        "clip": seeds[0]["clip"],
        "clip_value": seeds[0]["clip_value"] if seeds[0]["clip"] != "none" else None,
        "clip_chosen": bool(seeds[0].get("clip_chosen")),  # the pilot chose the clip mode
        "params": s0["num_params"],
        "seeds": len(seeds),
        "steps": seeds[0].get("steps"),  # the step cap (study.json's record)
        "val_loss_mean": _stat([_val_loss(m) for m in seeds])[0],  # reported seeds; the pilot chose
        "test_loss_mean": loss_mean,
        "test_loss_sd": loss_sd,
        # geometric mean of the seeds that did not diverge, t-interval on the log (stats.py)
        "test_loss_ci": mean_ci([v for m, v in zip(seeds, test_losses)
                                 if m["summary"]["status"] != "diverged"]).as_dict(),
        "test_losses": dict(zip((str(m["seed"]) for m in seeds), test_losses)),  # by seed: pairs
        "seeds_still_learning": sum(learning),  # stopped on the step cap while still improving
        "instability_events": dict(zip((str(m["seed"]) for m in seeds), events)),
        "instability_events_ci": mean_ci(events, scale="linear").as_dict(),
        # 1 where the seed diverged: the exploding claim compares these, since a diverged seed
        # has no test loss to compare
        "diverged_by_seed": {str(m["seed"]): float(m["summary"]["status"] == "diverged")
                             for m in seeds},
        "optimizer": seeds[0].get("optimizer"),
        "hidden_size": seeds[0].get("hidden_size"),
        "match_params_of": seeds[0].get("match_params_of"),
        "lyapunov_target": seeds[0].get("lyapunov_target"),  # where a regulariser aimed λ₁
        "lyapunov_top_end_by_seed": {str(m["seed"]): v for m, v in zip(seeds, lam1) if v is not None},
        "test_accuracy_mean": acc_mean,  # classification tasks only (None elsewhere)
        "test_accuracy_sd": acc_sd,
        "baseline": baseline,
        "beats_baseline": loss_mean is not None and loss_mean < baseline,
        "seeds_solved": sum(bool(m["summary"].get("solved")) and m["summary"]["status"] != "diverged"
                            for m in seeds),
        "seeds_diverged": sum(m["summary"]["status"] == "diverged" for m in seeds),
        "diverged_steps": [m["summary"].get("diverged_step") for m in seeds
                           if m["summary"]["status"] == "diverged"],
        "steps_to_solve": (float(np.median([s for s in solve_steps if s is not None]))
                           if any(s is not None for s in solve_steps) else None),
        # per target: each seed's steps (censored where not reached), Kaplan–Meier, median
        "time_to_target": time_to_target.row_times(seeds, _eval_rows, baseline, seeds[0].get("steps"),
                                                   target_fractions, seconds_per_step),
        "seconds_per_step_alone": seconds_per_step,  # one model by itself (timing.json)
        "sigma_max_init": _stat(sig0)[0],
        "sigma_max_end": _stat(sig1)[0],
        "lyapunov_top_init": _stat(lam0)[0],
        "lyapunov_top_end": _stat(lam1)[0],
        # step_norm, near_zero, kaplan_yorke, dead_units, sigma_by_matrix: each _init and _end
        **init_end_summary([m["spectra"] for m in seeds]),
        # the regulariser's settings, lambda_1 on its window, the lag slope (the control study)
        **row_columns(seeds),
        "group_wall_time_s": s0["wall_time_s"],
        "group_members": s0.get("sweep", {}).get("members", 1),
        "seconds_per_1000_steps": _seconds_per_1000_steps(seeds),
        "member_dirs": [m["relpath"] for m in seeds],
    }


def _seconds_per_1000_steps(seeds: list[dict]) -> float | None:
    """One model's share of its vmapped group's time (compiles included), per 1000 steps: the
    group's wall time compares nothing (32 ReLU members vs 8 GRU members in one program). Read
    from a seed that completed: a diverged one's clock stopped at its divergence, mostly compile."""
    done = [m["summary"] for m in seeds if m["summary"]["status"] == "completed"
            and m["summary"].get("wall_time_s") and m["summary"].get("steps_completed")]
    if not done:
        return None
    s = done[0]
    return s["wall_time_s"] / s.get("sweep", {}).get("members", 1) / s["steps_completed"] * 1000


def seed_baselines(members: list[dict], test_chunks: int) -> dict[tuple[str, int], float]:
    """(table, seed) -> the baseline predictor's loss on that seed's test set, where the task's
    baseline varies with the sample (adding: the test set's own variance of the target), so a
    row is compared with the baseline on the very samples it was tested on."""
    from rnn_spectra.rng import TEST_STREAM, stream_key

    out = {}
    for m in members:
        key = (m["table"], m["seed"])
        if key in out or not test_chunks:
            continue
        run = load_run(m["dir"])
        task, tr = run.experiment.task, run.run_config.train
        k = stream_key(run.run_config.seed, TEST_STREAM)
        values = [task.baseline_on(task.eval_batch(k, i, tr.eval_batch_size, True)[1])
                  for i in range(test_chunks * tr.eval_batches)]
        out[key] = None if values[0] is None else float(np.mean([float(v) for v in values]))
    return {k: v for k, v in out.items() if v is not None}


def _row(t: str, r: str, seeds: list[dict], reported: list[dict], choosing: list[dict],
         baselines: dict, fracs, chose: str, seconds: float | None) -> dict:
    """Table ``t``'s row ``r``: its confirmation seeds (``reported``; the pilot's ``seeds`` where
    there are none) at the setting the pilot of table ``chose`` picked; ``seconds``: one model's
    step, timed alone."""
    row = summarise(t, r, reported or seeds, fracs, seconds)
    row["test_baselines"] = {str(m["seed"]): baselines[(t, m["seed"])]
                             for m in (reported or seeds) if (t, m["seed"]) in baselines}
    tried = [m for m in choosing if (m["table"], m["row"]) == (chose, r)]
    grid = sorted({m["learning_rate"] for m in tried})
    searched = any(m.get("searched") for m in tried)
    row.update({
        "confirmed": bool(reported),  # False: the numbers are the pilot's (a study from before
        # the confirmation phase, or one interrupted before it): chosen and quoted on one set
        "tuned_on": chose if chose != t else None,  # a ladder: the table whose pilot chose
        "init_gain": seeds[0].get("init_gain", 1.0),
        "searched": searched,  # the pilot's settings were a search's points, not a grid
        "pilot_seeds": len(seeds),
        "pilot_settings": len({m["setting"] for m in tried}),  # the tuning budget spent
        # of which distinct points (a row whose pilot chose its clip mode ran each twice)
        "pilot_points": len({(m["learning_rate"], m.get("init_gain", 1.0)) for m in tried}),
        "pilot_val_loss_mean": _stat([_val_loss(m) for m in seeds])[0],
        "learning_rates_tried": grid,
        # a search's points are not a grid: no edge to extend
        "lr_at_grid_edge": not searched and len(grid) > 1
        and seeds[0]["learning_rate"] in (grid[0], grid[-1]),
        "extended": any(m.get("phase") == "extend" for m in tried),
    })
    return row


def build_results(workdir: str) -> dict:
    study, members = load_members(workdir)
    fracs = time_to_target.fractions(study.get("preset_fields") or {})
    measured = timing.read_timing(workdir)
    reported = [m for m in members if m.get("phase") == "confirm"] or members
    baselines = seed_baselines(reported, study.get("preset_fields", {}).get("test_chunks", 4))
    choosing = [m for m in members if m.get("phase") != "confirm"]
    # (table that chose, row, setting) -> table -> its confirmation seeds: a ladder's tables
    # confirm the settings chosen on another (its record's "tuned_on")
    confirming = defaultdict(lambda: defaultdict(list))
    for m in members:
        if m.get("phase") == "confirm":
            chose = m.get("tuned_on") or m["table"]
            confirming[(chose, m["row"], m["setting"])][m["table"]].append(m)
    rows = []
    for (tc, r), seeds in choose_best(choosing).items():
        for t, reported in (confirming.get((tc, r, seeds[0]["setting"])) or {tc: []}).items():
            seconds = timing.row_seconds(measured, f"{t}|{r}") if reported else None
            rows.append(_row(t, r, seeds, reported, choosing, baselines, fracs, tc, seconds))
    # Divergence over the whole grid of a row, not only at its chosen setting: an unclipped
    # variant can look fine at its best learning rate and still blow up at the other ones.
    runs: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for m in choosing:  # the pilot's grid (and its extension): every setting, the same seeds
        runs[(m["table"], m["row"])].append(m)
    for r in rows:
        by_clip = defaultdict(lambda: [0, 0])  # clip mode -> [diverged, runs] (a row whose
        for m in runs[(r["tuned_on"] or r["table"], r["variant"])]:  # pilot chose it: both)
            by_clip[m["clip"]][0] += m["summary"]["status"] == "diverged"
            by_clip[m["clip"]][1] += 1
        r["runs_by_clip"] = dict(by_clip)
    order = {name: i for i, name in enumerate(dict.fromkeys(m["table"] for m in study["members"]))}
    rows.sort(key=lambda r: (order.get(r["table"], 99), r["test_loss_mean"] if r["test_loss_mean"]
                             is not None else math.inf))
    # Does an early spectrum predict the end? Over the members measured from init (the
    # confirmation; the pilot records no spectra), per table.
    measured = [m for m in members if len(m["spectra"]) >= 2]
    confirmed = [m for m in measured if m.get("phase") == "confirm"]
    return {"predictors": predictor_table(confirmed or measured),
            "preset": study["preset"], "design": design_hash(study),
            "seed_offset": study.get("seed_offset", 0),
            "machine": study.get("machine"), "jax": study.get("jax"),
            "started": study.get("started"), "finished": study.get("finished"),
            "wall_time_s": study.get("wall_time_s"), "members": len(members),
            "workers": study.get("workers", 1),  # a study from before --workers ran in-process
            "groups_found_done": study.get("groups_found_done", 0),
            "member_steps": sum(int(m.get("steps", 0)) for m in study["members"]), "rows": rows}
