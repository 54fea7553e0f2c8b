"""The *Findings* section in words: sentences generated from a study's rows and claims, never
written by hand, each with its interval and the id of the claim in ``claims.json`` it rests on.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
from scipy import stats as sps

from rnn_spectra.study.findings import (DIVERGED, EVENTS, SHORT, STEPS_TO, build_claims,
                                        multiplicity)
from rnn_spectra.study.stats import LEVEL, UNDECIDED, Interval, detectable_shift


def fmt(x, digits=3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:.{digits}g}"


def _budget_sentence(rows: list[dict]) -> list[str]:
    """Is the budget enough? The share of confirmed rows that are done at the step cap (at most
    half their seeds still learning): a table of rows still learning compares budgets."""
    rows = [r for r in rows if r.get("confirmed", True) and r.get("seeds")]
    if not rows:
        return []
    done = [r for r in rows if 2 * r.get("seeds_still_learning", 0) <= r["seeds"]]
    return [f"*Budget*: {len(done)} of {len(rows)} confirmed rows ({100 * len(done) / len(rows):.0f}%) "
            "are done at the step cap (at most half their seeds still learning); the rest say more "
            "about the budget than about the cell."]


def findings(results: dict, claims: list[dict] | None = None) -> list[str]:
    """Sentences generated from the rows and their claims (``findings.py``; built from the rows
    when not given); no hand-written conclusions, no comparison without its interval, each
    sentence with the id of the claim in claims.json it rests on."""
    claims = build_claims(results) if claims is None else claims
    out = [_multiplicity_sentence(claims), *_detectable_sentence(claims),
           *_budget_sentence(results["rows"])]
    by_table = defaultdict(list)
    for r in results["rows"]:
        by_table[r["table"]].append(r)
    for table, rows in by_table.items():
        base = rows[0]["baseline"]
        mine = [c for c in claims if c["id"].startswith(f"{table}|")]
        vs_base = {c["a"]: c for c in mine if c["b"] == "baseline"}
        below = [c for c in vs_base.values() if c["sign"] < 0]
        above = [c for c in vs_base.values() if c["sign"] > 0]

        def named(cs):
            return "".join(f"{'' if i else ': '}{'' if not i else ', '}{c['a']} [`{c['id']}`]"
                           for i, c in enumerate(cs))
        learning = [r for r in rows if r.get("seeds_still_learning")]
        text = (f"**{table}** (baseline {fmt(base, 4)}, decided within the family "
                f"`{table}|vs baseline`): {len(below)} of {len(rows)} rows have a test loss below "
                f"the baseline{named(below)}; {len(above)} above it{named(above)}; "
                f"{len(rows) - len(below) - len(above)} not distinguishable from it at this budget")
        if learning:
            text += ("; still learning at the step cap (best validation loss of the last 25% of "
                     "the steps > 1% below the best before, and by > 1% of the baseline): " + ", ".join(
                         f"{r['variant']} ({r['seeds_still_learning']}/{r['seeds']})" for r in learning)
                     + ": their numbers are a property of the budget")
        out.append(text + ".")
        for r in rows:
            if r["seeds_diverged"]:
                out.append(
                    f"{table}: {r['variant']} diverged in {r['seeds_diverged']}/{r['seeds']} seeds "
                    f"even at its chosen setting ({r['setting']}); σ_max(W_s) at init "
                    f"{fmt(r['sigma_max_init'])}, "
                    + (f"mean one-step Jacobian norm {fmt(r['step_norm_init'])}, "
                       if r.get("step_norm_init") is not None else "")
                    + f"top Lyapunov exponent at init {lyap_text(r, 'init')} per step.")
        edge = [r for r in rows if r.get("lr_at_grid_edge")]
        if edge:
            out.append(f"{table}: chosen learning rate still on the edge of the (extended) grid: "
                       + ", ".join(f"{r['variant']} ({r['setting']})" for r in edge)
                       + "; a better one may lie beyond it.")
        decided = [c for c in mine if c["sign"] and c["b"] != "baseline"]
        out += [f"{table}: {sentence(c)}" for c in decided]
        out += _undecided(table, [c for c in mine if not c["sign"] and c["b"] != "baseline"])
    tasks = sorted({c["family"].split("|")[0] for c in claims if c.get("family", "").endswith("|interaction")})
    for task in tasks:
        mine = [c for c in claims if c.get("family") == f"{task}|interaction"]
        out += [f"{task}: {sentence(c)}" for c in mine if c["sign"]]
        out += _undecided(f"{task} (does a ratio change with T?)", [c for c in mine if not c["sign"]])
    for clip_on in (False, True):
        counts = [(r, *_pilot_runs(r, clip_on)) for r in results["rows"]]
        total = sum(n for _, _, n in counts)
        if not total:  # a design without clipped rows (the control preset): nothing to count
            continue
        rs = [(r, d, n) for r, d, n in counts if d]
        text = (f"Over every setting of the pilot grid, {sum(d for _, d, _ in rs)} of {total} "
                f"runs {'with' if clip_on else 'without'} clipping diverged")
        if rs:
            worst = sorted(rs, key=lambda x: -x[1])[:4]
            text += ", most in " + ", ".join(
                f"{r['table']} {r['variant']} ({d}/{n}, σ_max(W_s) at init "
                f"{fmt(r['sigma_max_init'])})" for r, d, n in worst)
        out.append(text + ".")
    return out


def _pilot_runs(r: dict, clip_on: bool) -> tuple[int, int]:
    """(diverged, runs) of row ``r``'s pilot with or without clipping (a row whose pilot chose
    its clipping mode ran both)."""
    pairs = [v for c, v in r["runs_by_clip"].items() if (c != "none") == clip_on]
    return sum(d for d, _ in pairs), sum(n for _, n in pairs)


def _undecided(where: str, claims: list[dict]) -> list[str]:
    if not claims:
        return []
    return [f"{where}: {UNDECIDED}: " + "; ".join(
        f"{c['a']} vs {c['b']} ({SHORT.get(c['quantity'], c['quantity'])}, "
        f"{_with_level(Interval.from_dict(c['difference']))}) [`{c['id']}`]" for c in claims) + "."]


def _with_level(ci: Interval) -> str:
    return ci.text() + ("" if math.isclose(ci.level, LEVEL) else f" at {100 * ci.level:.3g}%")


def _multiplicity_sentence(claims: list[dict]) -> str:
    m = multiplicity(claims)
    return (f"**Comparisons made: {m['comparisons']}** in {m['families']} families (one table, one "
            f"kind of comparison). Were there no differences at all, about "
            f"{m['by_chance_unadjusted']:.0f} of them would reach 95% by chance; within each family "
            f"Benjamini–Hochberg at q = {100 * m['fdr']:g}% decides, so of the {m['decided']} decided "
            f"claims about {m['expected_false_among_decided']:.1f} or fewer are expected to be false "
            "on average. A decided claim shows its interval at its family's adjusted level "
            "(Benjamini & Yekutieli 2005); an undecided one its interval at the level at which its family "
            "left it undecided, which contains no difference.")


def _detectable_sentence(claims: list[dict]) -> list[str]:
    """The smallest ratio the study could detect, from the spread of its paired log ratios."""
    spreads, ns = [], []
    for c in claims:
        ci = Interval.from_dict(c["difference"])
        if ci.method == "t" and ci.scale == "log" and c["b"] != "baseline" and ci.n >= 2 \
                and not c["quantity"].startswith(STEPS_TO):  # log loss only, not steps
            half = (ci.hi - ci.lo) / 2
            spreads.append(half / float(sps.t.ppf(0.5 + ci.level / 2, ci.n - 1)) * ci.n ** 0.5)
            ns.append(ci.n)
    if not spreads:
        return []
    n = int(np.median(ns))
    sd = float(np.median(spreads))
    shift = detectable_shift(n)
    return [f"*Minimum detectable effect*: at {n} paired seeds a t-test on log loss detects, with "
            f"80% power at 5% (before the family adjustment), a mean log ratio of {shift:.2f} sd of "
            f"the per-seed log ratio; with this study's median sd ({sd:.2f}) that is a ratio of "
            f"×{math.exp(shift * sd):.2g} (or ×{math.exp(-shift * sd):.2g}). Smaller differences "
            f"read *{UNDECIDED}*, which says as much about the budget as about the cells."]


def lyap_text(r: dict, when: str) -> str:
    """λ₁ of the seeds: "−∞" when every seed's is -inf (exactly zero stretching), and the count of
    such seeds next to the mean of the others; never a silent "–"."""
    value, neginf = r.get(f"lyapunov_top_{when}"), r.get(f"lyapunov_top_neginf_{when}") or 0
    if neginf and value is None:
        return "−∞"
    return fmt(value, 2) + (f" (−∞ in {neginf}/{r['seeds']})" if neginf else "")


def _never_reached(ci: Interval) -> str | None:
    """"b" when the whole interval of a ratio A/B is 0 (so many of B's seeds never reached the
    target, infinite steps, or diverged, infinite loss, that every bound is), "a" when it is
    infinite; None for a finite ratio. "×0 [0, 0]" says neither."""
    if ci.scale != "log":
        return None
    if math.isinf(ci.hi) and ci.hi < 0:
        return "b"
    if math.isinf(ci.lo) and ci.lo > 0:
        return "a"
    return None


def sentence(c: dict) -> str:
    """The claim in words, with its interval; 'lower'/'higher' only when it was decided."""
    ci = Interval.from_dict(c["difference"])
    what = {EVENTS: "events", DIVERGED: "share of seeds diverged"}.get(c["quantity"], c["quantity"])
    measure = "ratio A/B" if ci.scale == "log" else "difference A − B"
    if c["sign"] == 0:
        body = f"{c['a']} vs {c['b']} ({what}): {UNDECIDED}; {measure} {ci.text()}"
    elif c["quantity"].startswith(STEPS_TO):
        target = c["quantity"][len(STEPS_TO) + 1:]
        never = _never_reached(ci)
        ratio = (f"{c[never]} did not reach it on too many seeds for a finite ratio of steps "
                 f"(decided at the "
                 f"{100 * ci.level:.3g}% level" if never else
                 f"ratio of steps A/B {ci.text()} ({100 * ci.level:.3g}% interval")
        body = (f"{c['a']} reaches {target} {'sooner' if c['sign'] < 0 else 'later'} than "
                f"{c['b']}: {ratio}{_method(ci).replace('diverged seeds', 'seeds not reached')})")
    else:
        never = _never_reached(ci)  # on a loss: that side's diverged seeds, ranked worst
        ratio = (f"{c[never]} diverged on too many seeds for a finite ratio (decided at the "
                 f"{100 * ci.level:.3g}% level" if never else
                 f"{measure} {ci.text()} ({100 * ci.level:.3g}% interval")
        body = (f"{c['a']} has {'lower' if c['sign'] < 0 else 'higher'} {what} than {c['b']}: "
                f"{ratio}{_method(ci)})")
    learning = [f"{v} {k}/{n}" for v, (k, n) in c.get("still_learning", {}).items() if k]
    if learning:
        body += " (still learning at the step cap: " + ", ".join(learning) + " seeds)"
    diverged = [f"{v} {k}/{n}" for v, (k, n) in c.get("diverged", {}).items() if k]
    if diverged and c["quantity"] != DIVERGED:
        body += " (diverged, counted as the worst outcome: " + ", ".join(diverged) + " seeds)"
    missed = [f"{v} {k}/{n}" for v, (k, n) in c.get("not_reached", {}).items() if k]
    if missed:
        body += " (not reached by the step cap, counted as the slowest: " + ", ".join(missed) + " seeds)"
    return body + f" [`{c['id']}`]."


def _method(ci: Interval) -> str:
    return {"rank": ", Hodges–Lehmann, diverged seeds ranked worst",
            "signed-rank": ", signed-rank, diverged seeds ranked worst",
            "boschloo": f", Boschloo p = {ci.p:.2g}" if ci.p is not None else ""}.get(ci.method, "")
