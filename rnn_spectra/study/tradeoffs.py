"""Parameters and time on one axis: each confirmed row's test loss against its free parameters
and against the seconds one model takes to train for the row's budget (``timing.py``: one model
alone on one device, not a vmapped group's time divided by its size). A cell that wins only by
being bigger or slower shows it here.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict

from rnn_spectra.study.stats import Interval


def _loss(r: dict) -> tuple[float, float, float] | None:
    """(geometric mean, lo, hi) of the row's test loss; lo = hi = the mean without an interval."""
    d = r.get("test_loss_ci")
    if not d:
        return None
    ci = Interval.from_dict(d)
    if ci.n == 0 or ci.scale != "log" or not math.isfinite(ci.estimate):
        return None
    g = math.exp(ci.estimate)
    ok = ci.n > 1 and math.isfinite(ci.lo) and math.isfinite(ci.hi)
    return g, math.exp(ci.lo) if ok else g, math.exp(ci.hi) if ok else g


def training_seconds(r: dict) -> float | None:
    """One model's seconds for the row's whole budget: its measured step time x its steps."""
    per_step, steps = r.get("seconds_per_step_alone"), r.get("steps")
    if not per_step or not steps:
        return None
    return float(per_step) * int(steps)


def cost_figures(results: dict, out_dir: str) -> list[str]:
    """One figure per table: test loss vs free parameters, and vs one model's training seconds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rnn_spectra.plots import STYLE, save

    by_table = defaultdict(list)
    for r in results["rows"]:
        if r.get("confirmed", True) and _loss(r):
            by_table[r["table"]].append(r)
    paths = []
    for table, rows in by_table.items():
        with plt.rc_context(STYLE):
            fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True)
            markers = "osD^v<>pPX*h"
            timed = 0
            for i, r in enumerate(rows):
                g, lo, hi = _loss(r)
                style = dict(marker=markers[i % len(markers)], capsize=3, ls="none",
                             label=r["variant"])
                yerr = [[g - lo], [hi - g]]
                line = axes[0].errorbar([r["params"]], [g], yerr=yerr, **style)
                sec = training_seconds(r)
                if sec:
                    timed += 1
                    axes[1].errorbar([sec], [g], yerr=yerr, color=line[0].get_color(),
                                     **{k: v for k, v in style.items() if k != "label"})
            baseline = rows[0].get("baseline")
            for ax in axes:
                if baseline:
                    ax.axhline(baseline, color="grey", ls="--", lw=1)
                ax.set_xscale("log")
                ax.set_yscale("log")
            axes[0].set(xlabel="free parameters", ylabel="test loss (geometric mean, 95% CI)")
            axes[1].set(xlabel="seconds to train one model for the budget (measured alone)")
            if not timed:
                axes[1].text(0.5, 0.5, "no single-model timing recorded", ha="center",
                             transform=axes[1].transAxes)
            fig.suptitle(f"{table}: loss against size and time (dashed: trivial baseline)")
            handles, labels = axes[0].get_legend_handles_labels()
            fig.legend(handles, labels, fontsize=7, loc="upper center",
                       bbox_to_anchor=(0.5, 0.0), ncol=3)
            os.makedirs(out_dir, exist_ok=True)
            path = os.path.join(out_dir, f"{table}_loss_vs_cost.png")
            save(fig, path, dpi=110, tight=True)  # tight: the legend sits below the axes
        paths.append(path)
    return paths


def cost_lines(results: dict) -> list[str]:
    """Markdown: per table, the rows by test loss with params, one model's s/step and training
    seconds for the budget (the figure's numbers)."""
    out = []
    by_table = defaultdict(list)
    for r in results["rows"]:
        if r.get("confirmed", True) and _loss(r):
            by_table[r["table"]].append(r)
    if not any(training_seconds(r) for rows in by_table.values() for r in rows):
        return out
    out += ["", "## Loss against size and time", "",
            "Each confirmed row's test loss (geometric mean) beside its free parameters and the "
            "seconds one model takes to train for the row's budget, timed alone on this machine "
            "(`timing.json`).", ""]
    for table, rows in by_table.items():
        out += [f"**{table}**", "", "| variant | test loss | params | ms / step, one model | "
                "s for the budget |", "|---|---|---|---|---|"]
        for r in sorted(rows, key=lambda r: _loss(r)[0]):
            sec = training_seconds(r)
            ms = 1000 * r["seconds_per_step_alone"] if r.get("seconds_per_step_alone") else None
            out.append(f"| {r['variant']} | {_loss(r)[0]:.3g} | {r['params']:,} | "
                       + (f"{ms:.2f}" if ms else "–") + " | " + (f"{sec:.1f}" if sec else "–")
                       + " |")
        out.append("")
    return out
