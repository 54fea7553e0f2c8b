"""A budget ladder (the ``ladder`` preset): the settings one table's pilot chose, confirmed at
several step budgets (tables ``tuned_on`` it). Does a row's loss, and the ranking of the rows,
at the first budget survive a longer one? A table and a figure from the result rows; the
comparisons themselves are each budget's own claims (``findings.py``: every table gets them).
"""

from __future__ import annotations

import math
import os
from collections import defaultdict

import numpy as np

from rnn_spectra.study.sentences import fmt
from rnn_spectra.study.stats import Interval


def ladders(rows: list[dict]) -> dict[str, list[tuple[int, str]]]:
    """The table that chose -> its budgets as (steps, table), by steps; only where some table
    was ``tuned_on`` it."""
    steps: dict[str, dict[str, int]] = defaultdict(dict)
    for r in rows:
        if r.get("tuned_on"):
            steps[r["tuned_on"]][r["table"]] = r.get("steps") or 0
    for r in rows:
        if r["table"] in steps:
            steps[r["table"]][r["table"]] = r.get("steps") or 0
    return {src: sorted((n, t) for t, n in tables.items()) for src, tables in steps.items()}


def _interval(r: dict) -> Interval | None:
    ci = r.get("test_loss_ci")
    return Interval.from_dict(ci) if ci else None


def _geo(r: dict) -> float | None:
    """The row's geometric-mean test loss (None where no seed has a finite one)."""
    ci = _interval(r)
    if ci is None or ci.n == 0 or not math.isfinite(ci.estimate):
        return None
    return math.exp(ci.estimate) if ci.scale == "log" else ci.estimate


def _ranks(rows: list[dict]) -> dict[str, int]:
    """1 = lowest test loss (geometric mean); a row whose seeds all diverged ranks last."""
    order = sorted(rows, key=lambda r: (_geo(r) is None, _geo(r) or 0.0))
    return {r["variant"]: i + 1 for i, r in enumerate(order)}


def ladder_lines(results: dict) -> list[str]:
    """Markdown: per ladder, each row's confirmed test loss [95% CI], its rank and its seeds
    still learning at every budget, then how the ranking moved (Kendall's tau between the first
    and the last budget's ranks: descriptive; which pairs differ is each budget's claims)."""
    from scipy.stats import kendalltau

    rows = results["rows"]
    out = []
    for src, budgets in ladders(rows).items():
        by = {t: {r["variant"]: r for r in rows if r["table"] == t} for _, t in budgets}
        ranks = {t: _ranks(list(by[t].values())) for _, t in budgets}
        variants = sorted(by[budgets[0][1]], key=lambda v: ranks[budgets[0][1]][v])
        out += ["", f"## Budget ladder: {src}", "",
                f"The settings {src}'s pilot chose at {budgets[0][0]:,} steps, confirmed at each "
                "budget on the same fresh seeds: test loss, geometric mean [95% CI] (rank; seeds "
                "still learning at the cap).", "",
                "| variant | " + " | ".join(f"{n:,} steps" for n, _ in budgets) + " |",
                "|" + "---|" * (len(budgets) + 1)]
        for v in variants:
            cells = []
            for _, t in budgets:
                r = by[t].get(v)
                if r is None:
                    cells.append("–")
                    continue
                ci = _interval(r)
                loss = ci.text(ratio=False) if ci else fmt(r.get("test_loss_mean"))
                cells.append(f"{loss} (#{ranks[t][v]}; {r.get('seeds_still_learning', 0)}/{r['seeds']})")
            out.append(f"| {v} | " + " | ".join(cells) + " |")
        first, last = budgets[0][1], budgets[-1][1]
        common = [v for v in variants if v in ranks[last]]
        if len(common) >= 2 and first != last:
            tau = kendalltau([ranks[first][v] for v in common], [ranks[last][v] for v in common])
            moved = [v for v in common if ranks[first][v] != ranks[last][v]]
            out += ["", f"Ranking at {budgets[0][0]:,} vs {budgets[-1][0]:,} steps: Kendall's tau "
                    f"{tau.statistic:.2f} over {len(common)} rows; "
                    + (f"{len(moved)} changed rank ({', '.join(moved)})." if moved
                       else "no row changed rank.")
                    + " Which differences are decided at each budget: that budget's findings."]
    return out


def ladder_figures(results: dict, out_dir: str) -> list[str]:
    """Per ladder: confirmed test loss (geometric mean, 95% CI) against the step budget, log-log,
    one line per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rnn_spectra.plots import STYLE, save

    paths = []
    for src, budgets in ladders(results["rows"]).items():
        rows = [r for r in results["rows"] if r["table"] in {t for _, t in budgets}]
        with plt.rc_context(STYLE):
            fig, ax = plt.subplots(figsize=(6.4, 4.2))
            for v in dict.fromkeys(r["variant"] for r in rows):
                pts = []
                for n, t in budgets:
                    r = next((r for r in rows if r["table"] == t and r["variant"] == v), None)
                    ci = _interval(r or {})
                    if ci is not None and _geo(r) is not None and ci.scale == "log":
                        # a 1-seed row has no interval: its bar is the point itself
                        lo = math.exp(ci.lo) if ci.n > 1 and math.isfinite(ci.lo) else np.nan
                        hi = math.exp(ci.hi) if ci.n > 1 and math.isfinite(ci.hi) else np.nan
                        pts.append((n, _geo(r), lo, hi))
                if not pts:
                    continue
                n, g, lo, hi = map(np.asarray, zip(*pts))
                ax.errorbar(n, g, yerr=[g - np.where(np.isfinite(lo), lo, g),
                                        np.where(np.isfinite(hi), hi, g) - g],
                            marker="o", capsize=3, label=v)
            baseline = rows[0].get("baseline") if rows else None
            if baseline:
                ax.axhline(baseline, color="grey", ls="--", lw=1, label="trivial baseline")
            ax.set(xscale="log", yscale="log", xlabel="training steps (budget)",
                   ylabel="test loss (geometric mean, 95% CI)",
                   title=f"{src}: settings chosen at {budgets[0][0]:,} steps")
            ax.set_xticks([n for n, _ in budgets], [f"{n:,}" for n, _ in budgets])
            ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2)
            os.makedirs(out_dir, exist_ok=True)
            path = os.path.join(out_dir, f"{src}_ladder.png")
            save(fig, path, dpi=110, tight=True)  # tight: the legend sits below the axes
        paths.append(path)
    return paths
