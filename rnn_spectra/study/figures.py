"""The study report's figures: one question per figure, per task and T, readable without the text.

Every line is one table row (variant x clipping at its chosen setting), averaged over its seeds,
with the band from the lowest to the highest seed where the figure shows a loss; colour names
the variant, solid lines are clipped runs and dashed lines unclipped ones. Rows with seeds still
learning when training stopped at the step cap say so in their label. A value
of -inf (an exactly zero Jacobian product, or lambda_1 = -inf) cannot be drawn on the axis: it is
marked by a downward triangle on the bottom edge at its x, in the line's colour, never dropped.
"""

from __future__ import annotations

import math
import os
import warnings
from collections import defaultdict

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from rnn_spectra import workdir as wd  # noqa: E402
from rnn_spectra.plots import save  # noqa: E402
from rnn_spectra.spectral.rows import (  # noqa: E402
    gradient_flow, jacobian_by_lag, lyapunov_top, sigma_max, step_norm,
)

LN10 = math.log(10.0)
# A table of more rows than this gets only its test-loss figure (which grows with its rows): the
# others' legends would cover their axes. The control study's 63 rows do; its report draws its
# matched pairs instead (``subset_figures``). Every other preset's tables have at most 23.
LEGEND_ROWS = 30


def _style(r: dict, colours: dict) -> dict:
    """A colour per variant, dashed where the row does not clip (a row whose pilot chose its
    clipping mode has no /clip= in its name: its own mode decides)."""
    base = r["variant"].partition("/clip=")[0]
    if base not in colours:
        colours[base] = plt.cm.tab10(len(colours) % 10)
    return {"color": colours[base], "linestyle": "--" if r["clip"] == "none" else "-",
            "linewidth": 1.4}


def _label(r: dict, text: str) -> str:
    k = r.get("seeds_still_learning")
    return f"{text} [still learning at cap: {k}/{r['seeds']}]" if k else text


def _finite_only(series: list[dict]) -> list[dict[int, float]]:
    """The finite values of each seed's series: JSON keeps a non-finite loss as a string
    ("nan", "inf"), which a seed that blew up between its evaluations records."""
    return [{s: v for s, v in ((s, _float(v)) for s, v in d.items())
             if v is not None and math.isfinite(v)} for d in series]


def _float(v) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _band(series: list[dict[int, float]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lowest and highest seed at every step that at least two seeds reached."""
    series = _finite_only(series)
    steps = [s for s in sorted({s for d in series for s in d}) if sum(s in d for d in series) >= 2]
    vals = [[d[s] for d in series if s in d] for s in steps]
    return np.asarray(steps), np.asarray([min(v) for v in vals]), np.asarray([max(v) for v in vals])


def _mean_curve(series: list[dict[int, float]]) -> tuple[np.ndarray, np.ndarray]:
    """Mean over seeds at every step that at least one seed reached (diverged seeds stop early)."""
    series = _finite_only(series)
    steps = sorted({s for d in series for s in d})
    means = [np.mean([d[s] for d in series if s in d]) for s in steps]
    return np.asarray(steps), np.asarray(means)


def _legend_below(fig, ax, *more) -> None:
    """One legend under the figure with the labelled lines of ``ax`` (and of ``more`` axes,
    each label once)."""
    handles, labels = ax.get_legend_handles_labels()
    for other in more:
        for h, lab in zip(*other.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=7, frameon=False)
    # Room for up to ~18 entries in three columns under the axes.
    fig.subplots_adjust(bottom=0.1 + 0.028 * math.ceil(len(handles) / 3) + 0.06)


def _seed_mean_log10(per_seed: list[list[float | None]]) -> np.ndarray:
    """Mean over seeds of natural-log values, in log10; missing and non-finite values skipped
    (a point where every seed is non-finite stays NaN and is not drawn)."""
    vals = np.asarray([[np.nan if v is None else v for v in s] for s in per_seed], dtype=float)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: "mean of empty slice"
        return np.nanmean(np.where(np.isfinite(vals), vals, np.nan), axis=0) / LN10


def _neginf_x(x, per_seed: list[list[float | None]]) -> np.ndarray:
    """The x of the points where at least one seed's value is -inf."""
    vals = np.asarray([[np.nan if v is None else v for v in s] for s in per_seed], dtype=float)
    return np.asarray(x)[np.any(np.isneginf(vals), axis=0)] if vals.size else np.asarray([])


def _mark_neginf(ax, marks: list[tuple[np.ndarray, dict]]) -> None:
    """Downward triangles on the bottom edge of ``ax`` at each (x, style) of ``marks``: -inf
    values, which no axis can show. Call after every line is drawn (the limits are final)."""
    marks = [(x, st) for x, st in marks if len(x)]
    if not marks:
        return
    bottom, top = ax.get_ylim()
    for i, (x, st) in enumerate(marks):
        ax.plot(x, np.full(len(x), bottom), linestyle="none", marker="v", markersize=7,
                color=st["color"], clip_on=False, zorder=5,
                label="−∞ (exactly zero; ≥1 seed)" if i == 0 else None)
    ax.set_ylim(bottom, top)


def _finish(fig, ax, title: str, path: str) -> str:
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.subplots_adjust(left=0.1, right=0.97, top=0.92)
    _legend_below(fig, ax)
    save(fig, path, dpi=90)
    return path


def make_figures(workdir: str, results: dict) -> list[str]:
    """Write figures/*.png for every table; return their paths relative to ``workdir``."""
    out_dir = wd.path(workdir, "figures")
    os.makedirs(out_dir, exist_ok=True)
    by_table = defaultdict(list)
    for r in results["rows"]:
        by_table[r["table"]].append(r)
    written = []
    for table, rows in by_table.items():
        data = {r["variant"]: _load(workdir, r["member_dirs"]) for r in rows}
        drawn = (_test_loss_figure, _loss_figure, _time_to_target_figure, _sigma_figure,
                 _jacobian_figure, _flow_figure)
        for fn in drawn[:1] if len(rows) > LEGEND_ROWS else drawn:
            path = fn(table, rows, data, out_dir)
            if path:
                written.append(os.path.relpath(path, workdir))
    return written


def subset_figures(workdir: str, name: str, rows: list[dict]) -> list[str]:
    """The trajectories (sigma_max, step norm, lambda_1), the lag profiles and the loss curves of
    some rows of one table (the control report's matched pairs), named ``name``; paths relative
    to ``workdir``."""
    if not rows:
        return []
    out_dir = wd.path(workdir, "figures")
    os.makedirs(out_dir, exist_ok=True)
    data = {r["variant"]: _load(workdir, r["member_dirs"]) for r in rows}
    paths = (fn(name, rows, data, out_dir) for fn in (_sigma_figure, _jacobian_figure, _loss_figure))
    return [os.path.relpath(p, workdir) for p in paths if p]


def _load(workdir: str, member_dirs: list[str]) -> list[dict]:
    return [{"metrics": wd.read_jsonl(os.path.join(workdir, d, wd.METRICS)),
             "spectra": wd.read_jsonl(os.path.join(workdir, d, wd.SPECTRA))} for d in member_dirs]


def _loss_figure(table, rows, data, out_dir):
    fig, ax = plt.subplots(figsize=(9, 6.5))
    colours = {}
    for r in rows:
        series = [{m["step"]: m["loss"] for m in seed["metrics"] if m.get("split") == "eval"}
                  for seed in data[r["variant"]]]
        x, y = _mean_curve(series)
        if len(x):
            style = _style(r, colours)
            ax.plot(x, y, label=_label(r, f"{r['variant']} ({r['setting']})"), **style)
            bx, lo, hi = _band(series)
            if len(bx):
                ax.fill_between(bx, lo, hi, color=style["color"], alpha=0.12, linewidth=0)
    ax.axhline(rows[0]["baseline"], color="black", linestyle=":", linewidth=1.2,
               label=f"trivial baseline {rows[0]['baseline']:.4g}")
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("validation loss (log scale)")
    return _finish(fig, ax, f"{table}: which variants learn? (validation loss: mean over the "
                            "reported seeds, band lowest to highest)",
                   os.path.join(out_dir, f"{table}_loss.png"))


def _time_to_target_figure(table, rows, data, out_dir):
    """One panel per target: the Kaplan–Meier share of seeds that have reached it by each step,
    with its 95% band (time_to_target.py); seeds that never did keep a curve below 1."""
    rows = [r for r in rows if r.get("time_to_target")]
    if not rows:
        return None
    fracs = [t["fraction"] for t in rows[0]["time_to_target"]]
    fig, axes = plt.subplots(1, len(fracs), figsize=(max(9.0, 6.5 * len(fracs)), 6.5), sharey=True,
                             squeeze=False)
    colours = {}
    for ax, f in zip(axes[0], fracs):
        for r in rows:
            t = next((t for t in r["time_to_target"] if t["fraction"] == f), None)
            if t is None:
                continue
            km, style = t["km"], _style(r, colours)
            end = max(km["steps"] + [t["last_step"]])  # flat to the last evaluation
            x = [0.0] + km["steps"] + [end]
            ax.step(x, [0.0] + km["fraction"] + km["fraction"][-1:], where="post",
                    label=f"{r['variant']} ({t['reached']}/{t['seeds']})" if ax is axes[0][0] else None,
                    **style)
            ax.fill_between(x, [0.0] + km["lo"] + km["lo"][-1:], [0.0] + km["hi"] + km["hi"][-1:],
                            step="post", color=style["color"], alpha=0.08, linewidth=0)
        ax.axhline(0.5, color="black", linestyle=":", linewidth=1.0)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("training step (at the evaluations)")
        ax.set_title(f"validation loss below {f:g}× the baseline ({f * rows[0]['baseline']:.3g})",
                     fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("share of seeds that reached it (Kaplan–Meier, 95% band)")
    fig.suptitle(f"{table}: how soon does each row reach the target? (not reached: censored at "
                 "the step cap; dotted: the median)", fontsize=10)
    fig.subplots_adjust(left=0.08, right=0.98, top=0.88, wspace=0.08)
    _legend_below(fig, axes[0][0])
    path = os.path.join(out_dir, f"{table}_time_to_target.png")
    save(fig, path, dpi=90)
    return path


def _test_loss_figure(table, rows, data, out_dir):
    """Every reported seed's test loss as a point, the mean with its 95% CI as a bar; hollow
    points for a row with seeds still learning at the step cap."""
    rows = [r for r in rows if r.get("test_losses")]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(10, 0.9 + 0.38 * len(rows) + 1.2))
    colours = {}
    for i, r in enumerate(reversed(rows)):
        style = _style(r, colours)
        vals = [v for v in r["test_losses"].values() if v is not None and math.isfinite(v)]
        jitter = np.linspace(-0.15, 0.15, len(vals)) if len(vals) > 1 else np.zeros(len(vals))
        ax.plot(vals, i + jitter, linestyle="none", marker="o", markersize=5,
                markerfacecolor="none" if r.get("seeds_still_learning") else style["color"],
                markeredgecolor=style["color"])
        ci = r.get("test_loss_ci") or {}
        if ci.get("n", 0) > 1:
            ax.errorbar([ci["estimate"]], [i], xerr=[[ci["estimate"] - ci["lo"]], [ci["hi"] - ci["estimate"]]],
                        color="black", marker="|", markersize=14, capsize=3, linewidth=1.2)
    ax.axvline(rows[0]["baseline"], color="black", linestyle=":", linewidth=1.2)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([_label(r, r["variant"].removesuffix("/clip=none")) for r in reversed(rows)],
                       fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("test loss per seed (log scale)\nbar: geometric mean, 95% t-interval; dotted: baseline; "
                  "hollow: still learning at the step cap", fontsize=8)
    ax.grid(alpha=0.3, axis="x")
    ax.set_title(f"{table}: test loss of every reported seed", fontsize=10)
    fig.subplots_adjust(left=0.45, right=0.97, top=1 - 0.5 / fig.get_figheight(),
                        bottom=0.95 / fig.get_figheight())
    path = os.path.join(out_dir, f"{table}_test_loss.png")
    save(fig, path, dpi=90)
    return path


def _sigma_figure(table, rows, data, out_dir):
    """Three panels over training: σ_max(W_s) (max over gates), the mean norm of the effective
    one-step state Jacobian (Pascanu's factor, for every cell) and λ₁ (−∞ marked)."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 6.5))
    colours, any_line, marks = {}, False, []
    panels = ((axes[0], sigma_max, "σ_max(W_s), max over gates"),
              (axes[1], step_norm, "mean ‖∂s_{t+1}/∂s_t‖₂ on the probes"),
              (axes[2], lyapunov_top, "λ₁ (nats per step)"))
    for r in rows:
        style = _style(r, colours)
        for ax, fn, _ in panels:
            series = [{s["step"]: fn(s) for s in seed["spectra"]} for seed in data[r["variant"]]]
            x, y = _mean_curve(series)
            if len(x):
                any_line = True
                ax.plot(x, y, marker="o", markersize=3, label=r["variant"] if ax is axes[0] else None,
                        **style)
            if fn is lyapunov_top:
                marks.append((np.asarray(sorted({st for d in series for st, v in d.items()
                                                  if v == -math.inf})), style))
    if not any_line and not any(len(m[0]) for m in marks):
        plt.close(fig)
        return None
    for ax, _, name in panels[:2]:
        ax.axhline(1.0, color="black", linestyle=":", linewidth=1.2)
        ax.set_yscale("log")
    axes[2].axhline(0.0, color="black", linestyle=":", linewidth=1.2)
    _mark_neginf(axes[2], marks)
    for ax, _, name in panels:
        ax.set_xlabel("training step")
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{table}: does the recurrence stretch or shrink? (σ_max < 1 or λ₁ < 0: vanishing is certain; σ_max > 1 is needed for exploding, not enough)",
                 fontsize=10)
    fig.subplots_adjust(left=0.06, right=0.98, top=0.88, wspace=0.25)
    _legend_below(fig, axes[0], axes[2])
    path = os.path.join(out_dir, f"{table}_sigma_max.png")
    save(fig, path, dpi=90)
    return path


def _jacobian_figure(table, rows, data, out_dir):
    fig, axes = plt.subplots(1, 2, figsize=(10, 6.5), sharey=True)
    colours, any_line, marks = {}, False, {0: [], -1: []}
    for r in rows:
        for ax, which in zip(axes, (0, -1)):
            per_seed = [jacobian_by_lag(seed["spectra"][which]) for seed in data[r["variant"]]
                        if seed["spectra"]]
            if not per_seed:
                continue
            lags = np.asarray(per_seed[0][0])
            y = _seed_mean_log10([s[1] for s in per_seed])
            any_line = True
            style = _style(r, colours)
            ax.plot(lags, y, label=r["variant"] if which == -1 else None, **style)
            marks[which].append((_neginf_x(lags, [s[1] for s in per_seed]), style))
    if not any_line:
        plt.close(fig)
        return None
    for ax, which in zip(axes, (0, -1)):
        _mark_neginf(ax, marks[which])
    for ax, name in zip(axes, ("at initialisation", "at the end of training")):
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.axhline(0.0, color="black", linestyle=":", linewidth=1.0)
        ax.set_xlabel("lag k = T − t (steps)")
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("log10 ||∂h_T / ∂h_t||₂ (mean over probes)")
    fig.suptitle(f"{table}: does the long-range gradient vanish or explode?", fontsize=10)
    fig.subplots_adjust(left=0.08, right=0.98, top=0.88, wspace=0.08)
    _legend_below(fig, axes[1], axes[0])
    path = os.path.join(out_dir, f"{table}_jacobian_vs_lag.png")
    save(fig, path, dpi=90)
    return path


def _flow_figure(table, rows, data, out_dir):
    fig, ax = plt.subplots(figsize=(9, 6.5))
    colours, any_line, marks = {}, False, []
    for r in rows:
        per_seed = [gradient_flow(seed["spectra"][-1]) for seed in data[r["variant"]] if seed["spectra"]]
        if not per_seed or not per_seed[0][0]:
            continue
        t = np.asarray(per_seed[0][0])
        y = _seed_mean_log10([s[1] for s in per_seed])
        any_line = True
        style = _style(r, colours)
        ax.plot(t, y, label=r["variant"], **style)
        marks.append((_neginf_x(t, [s[1] for s in per_seed]), style))
    if not any_line:
        plt.close(fig)
        return None
    _mark_neginf(ax, marks)
    ax.set_xlabel("time step t of the input sequence")
    ax.set_ylabel("log10 ||∂L / ∂h_t|| (probe batch)")
    return _finish(fig, ax, f"{table}: how far back does the loss gradient reach? (end of training)",
                   os.path.join(out_dir, f"{table}_gradient_flow.png"))
