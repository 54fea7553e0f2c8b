"""The study's report from its workdir alone: ``W/results.json``, ``W/report.md``, ``W/figures/``.

The rows come from ``results.py``; every sentence of "Findings" is generated from their numbers.
"""

from __future__ import annotations

import os
from collections import defaultdict


from rnn_spectra import workdir as wd
from rnn_spectra.errors import WorkdirError
from rnn_spectra.study.claims import CLAIMS, write_claims
from rnn_spectra.study.control_report import match_section, matched_figures
from rnn_spectra.study.findings import build_claims
from rnn_spectra.study.ladder import ladder_figures, ladder_lines
from rnn_spectra.study.tradeoffs import cost_figures, cost_lines
from rnn_spectra.study.sentences import findings, fmt, lyap_text
from rnn_spectra.study.predictors import predictors_figure, render_predictors
from rnn_spectra.study.results import build_results
from rnn_spectra.study.stats import Interval
from rnn_spectra.study.time_to_target import cell_text, seconds_text
from rnn_spectra.tasks.images import SOLVED_ACCURACY

# ----------------------------------------------------------------------------- findings


# ----------------------------------------------------------------------------- markdown

COLUMNS = [
    ("variant", "variant", str),
    ("setting", "chosen setting", None),
    ("params", "params", str),
    ("test_loss", "test loss, geometric mean [95% CI]", None),
    ("seeds_solved", "solved", None),
    ("seeds_diverged", "diverged", None),
    ("seeds_still_learning", "still learning", None),
    ("events", "instability events / run, mean [95% CI]", None),
    ("target", "", None),  # one column per target (_columns)
    ("lyap", "λ₁ init → end", None),
    ("seconds_per_step_alone", "ms / step, one model alone",
     lambda x: fmt(1000 * x, 2) if x else "–"),
]
# The spectra table under each task's table: one row per variant, init → end, seed means.
SPECTRAL_COLUMNS = [
    ("variant", "variant"),
    ("sigma", "σ_max(W) per matrix"),
    ("step_norm", "‖∂s_{t+1}/∂s_t‖₂ (mean)"),
    ("lyap", "λ₁"),
    ("near_zero", "#λ≈0"),
    ("kaplan_yorke", "D_KY"),
    ("dead_units", "dead units"),
]


def _init_end(r: dict, key: str, digits: int = 3, show=None) -> str:
    show = show or (lambda x: fmt(x, digits))
    return f"{show(r.get(f'{key}_init'))} → {show(r.get(f'{key}_end'))}"


def _sigma_by_matrix(r: dict) -> str:
    first, last = r.get("sigma_by_matrix_init") or {}, r.get("sigma_by_matrix_end") or {}
    if not first and r.get("sigma_max_init") is not None:  # results.json from before #14
        return _init_end(r, "sigma_max")
    if list(first) == ["W_s"]:
        return f"{fmt(first['W_s'])} → {fmt(last.get('W_s'))}"
    order = ("W_i", "W_f", "W_g", "W_o", "W_r", "W_z", "W_n")  # the cells' stacking order
    names = sorted(first, key=lambda m: order.index(m) if m in order else len(order))
    return "; ".join(f"{m[2:] if m.startswith('W_') else m} {fmt(first[m])}→{fmt(last.get(m))}"
                     for m in names)


def _spectral_cell(r: dict, key: str) -> str:
    if key == "variant":
        return r["variant"]
    if key == "sigma":
        return _sigma_by_matrix(r)
    if key == "lyap":
        return f"{lyap_text(r, 'init')} → {lyap_text(r, 'end')}"
    if key == "near_zero":
        return _init_end(r, key, show=lambda x: fmt(x, 3))
    if key == "dead_units":
        return _init_end(r, key, show=lambda x: "–" if x is None else f"{100 * x:.0f}%")
    return _init_end(r, key, 3)


def spectral_table(rows: list[dict]) -> list[str]:
    """Markdown lines: the spectral quantities of one task's rows, with their definitions."""
    discard = next((r.get("lyapunov_discard") for r in rows if r.get("lyapunov_discard") is not None),
                   None)
    burn_in = (f"after a burn-in of {discard} steps" if discard is not None
               else "from step 0 (members recorded before the burn-in existed)")
    lines = ["", f"Spectra at init → end of training (mean over seeds, probe batch). Measured on "
             f"each probe's window: the leading steps with an exactly zero state Jacobian (a "
             f"ReLU-type cell with zero bias at the zero state while the input is zero) are skipped, "
             f"then the exponents and averages start {burn_in}. *σ_max(W)*: largest singular value "
             f"of each recurrent matrix (for LSTM/GRU one per gate, none of which is the factor in "
             f"Pascanu et al.'s bound); *‖∂s_{{t+1}}/∂s_t‖₂*: that factor, the spectral norm of the "
             f"effective one-step state Jacobian, averaged over the window (any cell); *λ₁*: top "
             f"Lyapunov exponent (nats per step; −∞ where a step has an exactly zero Jacobian, "
             f"marked, never dropped); *#λ≈0*: exponents within ±0.01 of zero (directions that carry "
             f"gradient over long lags, out of n); *D_KY*: Kaplan–Yorke dimension; *dead units*: "
             f"share of state components whose Jacobian row is zero.", "",
             "| " + " | ".join(c[1] for c in SPECTRAL_COLUMNS) + " |",
             "|" + "---|" * len(SPECTRAL_COLUMNS)]
    lines += ["| " + " | ".join(_spectral_cell(r, k) for k, _ in SPECTRAL_COLUMNS) + " |" for r in rows]
    return lines


def _columns(rows: list[dict]) -> list[tuple]:
    """COLUMNS with "target" made a steps column per target of the time to a target and one
    column of their seconds (none for rows from before the time to a target)."""
    fracs = [t["fraction"] for t in rows[0].get("time_to_target") or []] if rows else []
    targets = [(f"target:{f}", f"steps to {f:g}× baseline: KM median [95% CI]", None) for f in fracs]
    if fracs:
        targets.append(("target_seconds", "seconds to " + ", ".join(f"{f:g}×" for f in fracs)
                        + " baseline, one model alone", None))
    return [x for c in COLUMNS for x in (targets if c[0] == "target" else [c])]


def _ci(r: dict, key: str, fallback: str) -> str:
    ci = r.get(key)
    return Interval.from_dict(ci).text(ratio=False) if ci else fmt(r.get(fallback))


def _cell(r: dict, key: str, show) -> str:
    if key == "test_loss":
        return _ci(r, "test_loss_ci", "test_loss_mean") + ("" if r.get("confirmed", True) else " †")
    if key in ("seeds_solved", "seeds_diverged", "seeds_still_learning"):
        return f"{r.get(key, 0)}/{r['seeds']}"
    if key == "setting":  # the clipping mode too where the pilot chose it
        return (r["setting"] + (f", clip {r['clip']}" if r.get("clip_chosen") else "")
                + (" (edge)" if r.get("lr_at_grid_edge") else ""))
    if key == "events":
        return _ci(r, "instability_events_ci", "") if r.get("optimizer") == "sgd" else "–"
    if key.startswith("target:"):
        f = float(key.split(":")[1])
        return cell_text(next((t for t in r.get("time_to_target") or [] if t["fraction"] == f), None))
    if key == "target_seconds":
        return seconds_text(r.get("time_to_target") or [])
    if key in ("lyap", "near_zero"):
        return _spectral_cell(r, key)
    return show(r.get(key))


def _throughput(results: dict) -> str:
    """' on N worker processes (M member·steps/s)': what the study ran on and how fast; no speed
    where the last run found groups already trained (a resumed study, or Slurm array tasks that
    trained every group before the run that wrote this report): its wall time is not the study's."""
    wall, steps = results.get("wall_time_s"), results.get("member_steps")
    where = f" on {results.get('workers', 1)} worker process{'es' * (results.get('workers', 1) != 1)}"
    done = results.get("groups_found_done", 0)
    if done:
        return (f"{where} (the last run only: it found {done} group{'s' * (done != 1)} already "
                "trained, by an earlier run or by `study --phase/--group` tasks)")
    if isinstance(wall, (int, float)) and wall > 0 and steps:
        return f"{where} ({steps / wall:,.0f} member·steps/s)"
    return where


def render_markdown(results: dict, figures: list[str], claims: list[dict] | None = None) -> str:
    claims = build_claims(results) if claims is None else claims
    lines = [f"# Study report: preset `{results['preset']}`", ""]
    lines += [f"Machine: {results['machine']}; jax {results['jax']}; started {results['started']}, "
              f"finished {results['finished']}; {results['members']} trained members; study wall "
              f"time {fmt(results['wall_time_s'], 4)} s" + _throughput(results) + ".", ""]
    rows = results["rows"]
    steps = sorted({r.get("steps") for r in rows if r.get("steps")})
    searched = max((r.get("pilot_points", 0) for r in rows if r.get("searched")), default=0)
    chosen = any(r.get("clip_chosen") for r in rows)
    lines += [
        "**Design.** Each row is a variant at its own setting (learning rate; clip threshold where "
        "clipping is on" + ("; recurrent init gain *g* where its init has one" if searched else "")
        + ("; and the clipping mode itself for a row without */clip=* in its name: its pilot ran "
           "every point without and with global-norm clipping" if chosen else "")
        + "), chosen on the *pilot* seeds by mean validation loss (fewer diverged seeds first) "
        + (f"among the same {searched} quasi-random points (a scrambled Sobol sequence over "
           "log-uniform ranges) for every row: an equal tuning budget per cell"
           if searched else "over a log grid that is extended once where its best point lay on "
           "the edge (*(edge)*: still on it after that)")
        + ". The numbers are those of fresh *confirmation* seeds "
        "at the chosen setting, on a separate test set: no number in a table is one that chose "
        "it" + (" († marks a row without confirmation seeds: chosen and quoted on the same seeds)"
                if any(not r.get("confirmed", True) for r in rows) else "") + ". A row's test "
        "loss is the geometric mean of its seeds that did not diverge, with a 95% t-interval on "
        "the log; the seeds that diverged are counted beside it. Every comparison in *Findings* "
        "is a ratio of test losses A/B (λ₁ and event counts: a difference A − B) over the "
        "confirmation seeds, paired by seed where both rows ran the same seeds: a t-interval on "
        "the log ratios, or, where a seed diverged, the Hodges–Lehmann interval with diverged seeds "
        "ranked worst (a row that diverged more often is never called better); shares of diverged "
        "seeds by Boschloo's exact test. Its coverage was checked by simulation at these seed "
        "counts (`tests/test_calibration.py`). A comparison is stated only when Benjamini–Hochberg "
        "decides it within its family, else it reads *not distinguishable at this budget*; each "
        "carries the id of its record in `claims.json`, which `rnn-spectra report --check-claims` "
        "checks against another run." + (f" Training stops at a step cap ({', '.join(map(str, steps))} "
                                         "steps)." if steps else ""), "",
        "*Still learning*: seeds whose best validation loss over the last 25% of the steps was "
        "more than 1% below the best before and by more than 1% of the baseline (a row with such seeds is a property of its budget, "
        "never a failure). *Instability events* (SGD rows): logged training steps whose loss "
        "exceeded 10× the running median of the losses logged before, or whose pre-clip gradient "
        "norm exceeded 100× its running median, plus 1 for a divergence. *Solved*: adding — no "
        "test sample with squared error > 0.16 on the sum of the two marked values (Pascanu et al. "
        "2013's 0.04 on their mean; they check 10,000 samples, we check the test set); copying — "
        "test loss < 10% of the baseline; classification — test accuracy "
        f"≥ {100 * SOLVED_ACCURACY:g}%. *To x× baseline*: steps until the first "
        "evaluation whose validation loss is below that fraction of the baseline, per seed; a seed "
        "that never gets there (or diverges) is censored at the step cap, never dropped. Over the "
        "seeds, the Kaplan–Meier median with the interval where its 95% band crosses 50% (*>N*: "
        "beyond the last evaluation; *not reached*: fewer than half the seeds reached it), then the "
        "median in seconds of one model trained alone on one device (`timing.json`: the plain "
        "train step, no vmap, compile excluded), and how many seeds reached it. *Findings* compare "
        "the families' representatives on these steps per seed (ratio A/B, paired by seed, a seed "
        "not reached counted as the slowest), one family per table and target. "
        "*ms / step, one model alone*: a training step of the row's model timed by itself "
        "(`timing.json`; a vmapped group's time divided by its size is not one model's). *params*: free parameters. λ₁ (top Lyapunov exponent, nats per step) "
        "is averaged over seeds on a fixed probe batch; the table under each task's defines it and "
        "adds the other spectral quantities.", ""]
    lines += match_section(results, claims)  # the control design's match table comes first
    lines += ["## Findings", ""] + [f"- {s}" for s in findings(results, claims)] + [""]
    lines += ladder_lines(results)
    lines += cost_lines(results)
    by_table = defaultdict(list)
    for r in results["rows"]:
        by_table[r["table"]].append(r)
    for table, rows in by_table.items():
        lines += ["", f"## {table} — baseline {fmt(rows[0]['baseline'], 4)}", ""]
        cols = _columns(rows)
        lines += ["| " + " | ".join(c[1] for c in cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(_cell(r, k, f) for k, _, f in cols) + " |" for r in rows]
        lines += spectral_table(rows)
    lines += accuracy_table(results)
    if results.get("predictors"):
        lines += [""] + render_predictors(results["predictors"])
    if figures:
        lines += ["", "## Figures", ""]
        for f in figures:
            lines += [f"![{os.path.basename(f)}]({f})", ""]
    return "\n".join(lines) + "\n"


def accuracy_table(results: dict) -> list[str]:
    """Markdown lines: test accuracy (%) of every variant on every classification table."""
    rows = [r for r in results["rows"] if r.get("test_accuracy_mean") is not None]
    if not rows:
        return []
    tables = list(dict.fromkeys(r["table"] for r in rows))
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    acc = {(r["table"], r["variant"]): r for r in rows}

    def cell(t, v):
        r = acc.get((t, v))
        if r is None:
            return "–"
        return f"{100 * r['test_accuracy_mean']:.1f} ± {100 * (r['test_accuracy_sd'] or 0):.1f}"

    lines = ["", "## Test accuracy (%), classification tasks", "",
             f"Mean ± sd over seeds at each row's best setting (chosen by validation loss); chance "
             f"10%; *solved* means ≥ {100 * SOLVED_ACCURACY:g}%.", "",
             "| variant | " + " | ".join(tables) + " |", "|" + "---|" * (len(tables) + 1)]
    lines += ["| " + v + " | " + " | ".join(cell(t, v) for t in tables) + " |" for v in variants]
    return lines


def write_report(workdir: str) -> str:
    """Write results.json, figures/ and report.md into the study workdir; return report.md's path."""
    from rnn_spectra.study.figures import make_figures

    results = build_results(workdir)
    claims = build_claims(results)
    wd.write_json(wd.path(workdir, "results.json"), results)
    write_claims(workdir, claims, {k: results.get(k) for k in ("preset", "design", "seed_offset",
                                                                "machine", "finished")})
    figures = make_figures(workdir, results) + matched_figures(workdir, results)
    out = os.path.join(workdir, "figures")
    figures += [os.path.relpath(p, workdir)
                for p in ladder_figures(results, out) + cost_figures(results, out)]
    if results.get("predictors"):
        figures.append(os.path.relpath(predictors_figure(
            results["predictors"], os.path.join(workdir, "figures", "predictors.png")), workdir))
    path = wd.path(workdir, "report.md")
    wd.write_text(path, render_markdown(results, figures, claims))  # atomic; one line if it fails
    return path


def check_publish_dir(out_dir: str) -> None:
    """``--publish`` takes a folder (its results.md and figures/ are written): refuse a file
    (``--publish README.md``) before anything is written."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise WorkdirError(f"--publish {out_dir} is a file; give a folder (e.g. docs): the report "
                           "goes to FOLDER/results.md and its figures to FOLDER/figures/")
    for name in ("results.md", "figures"):
        inside = os.path.join(out_dir, name)
        if name == "figures" and os.path.exists(inside) and not os.path.isdir(inside):
            raise WorkdirError(f"--publish {out_dir}: {inside} is a file, not a folder; move it away")
        if name == "results.md" and os.path.isdir(inside):
            raise WorkdirError(f"--publish {out_dir}: {inside} is a folder; move it away")


def study_command(workdir: str) -> str:
    """The command that trains the study in ``workdir`` again (a published report's header)."""
    preset = wd.read_json(wd.path(workdir, "study.json")).get("preset", "?")
    command = f"rnn-spectra study --preset {preset} --workdir {workdir}"
    return f"make study ({command})" if preset == "cpu" else command


def publish(workdir: str, out_dir: str, command: str) -> str:
    """Copy a study's report, figures and claims to ``out_dir/results.md``, ``out_dir/figures/``
    and ``out_dir/claims.json`` (the docs), headed by the command that produced it; figure links
    stay relative."""
    import shutil

    check_publish_dir(out_dir)
    report = wd.path(workdir, "report.md")
    if not os.path.exists(report):
        raise WorkdirError(f"{report} does not exist; run `rnn-spectra report --workdir {workdir}`")
    results = wd.read_json(wd.path(workdir, "results.json"))
    fig_out = os.path.join(out_dir, "figures")
    header = (f"<!-- generated by `rnn-spectra report --publish`; do not edit by hand -->\n\n"
              f"Produced by `{command}` on {results['machine']}, finished {results['finished']}.\n\n")
    path = os.path.join(out_dir, "results.md")
    try:
        os.makedirs(fig_out, exist_ok=True)
        for name in os.listdir(wd.path(workdir, "figures")):
            shutil.copyfile(os.path.join(workdir, "figures", name), os.path.join(fig_out, name))
        if os.path.exists(wd.path(workdir, CLAIMS)):  # what `report --check-claims docs` reads
            shutil.copyfile(wd.path(workdir, CLAIMS), os.path.join(out_dir, CLAIMS))
        with open(report) as src, open(path, "w") as f:
            f.write(header + src.read())
    except OSError as e:
        raise wd.io_error(e.filename or out_dir, "publish to", e, "check the folder given to "
                          "--publish and its permissions") from None
    return path
