"""The study report's figures: one question per figure, per task and T, readable without the text.

Every line is one table row (variant x clipping at its best setting), averaged over its seeds;
colour names the variant, solid lines are clipped runs and dashed lines unclipped ones.
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
from rnn_spectra.spectral.rows import gradient_flow, jacobian_by_lag, sigma_max  # noqa: E402

LN10 = math.log(10.0)


def _style(variant: str, colours: dict) -> dict:
    base, _, clip = variant.rpartition("/clip=")
    if base not in colours:
        colours[base] = plt.cm.tab10(len(colours) % 10)
    return {"color": colours[base], "linestyle": "--" if clip == "none" else "-", "linewidth": 1.4}


def _mean_curve(series: list[dict[int, float]]) -> tuple[np.ndarray, np.ndarray]:
    """Mean over seeds at every step that at least one seed reached (diverged seeds stop early)."""
    steps = sorted({s for d in series for s in d})
    means = [np.mean([d[s] for d in series if s in d and d[s] is not None and math.isfinite(d[s])]
                     or [np.nan]) for s in steps]
    return np.asarray(steps), np.asarray(means)


def _legend_below(fig, ax) -> None:
    handles, labels = ax.get_legend_handles_labels()
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


def _finish(fig, ax, title: str, path: str) -> str:
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.subplots_adjust(left=0.1, right=0.97, top=0.92)
    _legend_below(fig, ax)
    fig.savefig(path, dpi=90)
    plt.close(fig)
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
        for fn in (_loss_figure, _sigma_figure, _jacobian_figure, _flow_figure):
            path = fn(table, rows, data, out_dir)
            if path:
                written.append(os.path.relpath(path, workdir))
    return written


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
            ax.plot(x, y, label=f"{r['variant']} ({r['setting']})", **_style(r["variant"], colours))
    ax.axhline(rows[0]["baseline"], color="black", linestyle=":", linewidth=1.2,
               label=f"trivial baseline {rows[0]['baseline']:.4g}")
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("validation loss (log scale)")
    return _finish(fig, ax, f"{table}: which variants learn? (validation loss, mean over seeds)",
                   os.path.join(out_dir, f"{table}_loss.png"))


def _sigma_figure(table, rows, data, out_dir):
    fig, ax = plt.subplots(figsize=(9, 6.5))
    colours, any_line = {}, False
    for r in rows:
        series = [{s["step"]: sigma_max(s) for s in seed["spectra"]} for seed in data[r["variant"]]]
        x, y = _mean_curve(series)
        if len(x):
            any_line = True
            ax.plot(x, y, marker="o", markersize=3, label=r["variant"], **_style(r["variant"], colours))
    if not any_line:
        plt.close(fig)
        return None
    ax.axhline(1.0, color="black", linestyle=":", linewidth=1.2, label="σ = 1 (vanish / explode border)")
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("σ_max of the recurrent matrix (max over gates)")
    return _finish(fig, ax, f"{table}: how does the largest singular value of W_s move?",
                   os.path.join(out_dir, f"{table}_sigma_max.png"))


def _jacobian_figure(table, rows, data, out_dir):
    fig, axes = plt.subplots(1, 2, figsize=(10, 6.5), sharey=True)
    colours, any_line = {}, False
    for r in rows:
        for ax, which in zip(axes, (0, -1)):
            per_seed = [jacobian_by_lag(seed["spectra"][which]) for seed in data[r["variant"]]
                        if seed["spectra"]]
            if not per_seed:
                continue
            lags = np.asarray(per_seed[0][0])
            y = _seed_mean_log10([s[1] for s in per_seed])
            any_line = True
            ax.plot(lags, y, label=r["variant"] if which == -1 else None, **_style(r["variant"], colours))
    if not any_line:
        plt.close(fig)
        return None
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
    _legend_below(fig, axes[1])
    path = os.path.join(out_dir, f"{table}_jacobian_vs_lag.png")
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _flow_figure(table, rows, data, out_dir):
    fig, ax = plt.subplots(figsize=(9, 6.5))
    colours, any_line = {}, False
    for r in rows:
        per_seed = [gradient_flow(seed["spectra"][-1]) for seed in data[r["variant"]] if seed["spectra"]]
        if not per_seed or not per_seed[0][0]:
            continue
        t = np.asarray(per_seed[0][0])
        y = _seed_mean_log10([s[1] for s in per_seed])
        any_line = True
        ax.plot(t, y, label=r["variant"], **_style(r["variant"], colours))
    if not any_line:
        plt.close(fig)
        return None
    ax.set_xlabel("time step t of the input sequence")
    ax.set_ylabel("log10 ||∂L / ∂h_t|| (probe batch)")
    return _finish(fig, ax, f"{table}: how far back does the loss gradient reach? (end of training)",
                   os.path.join(out_dir, f"{table}_gradient_flow.png"))
