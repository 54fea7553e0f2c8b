"""The control study's section of the report (issue #28): the match table first, with the
dead-unit fractions beside it, then the dose-response of lambda_1 to the regulariser, and the
figures of the matched pairs. Only for tables of the control design (``match_gate.applies``);
every number comes from the results rows and the claims (``match_gate``, ``findings``).
"""

from __future__ import annotations

import math
from collections import defaultdict

from rnn_spectra.study import match_gate as gate
from rnn_spectra.study.sentences import fmt
from rnn_spectra.study.stats import LEVEL, UNDECIDED, Interval

SHOWN = 4  # matched pairs listed per target (the tightest); the rest are counted


def _by_table(results: dict) -> dict[str, list[dict]]:
    out = defaultdict(list)
    for r in results["rows"]:
        out[r["table"]].append(r)
    return {t: rows for t, rows in out.items() if gate.applies(rows)}


def _short(r: dict) -> str:
    return r["variant"].removesuffix("/clip=none")


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.0f}%"


def _dead(r: dict) -> str:
    return f"{_pct(r.get('dead_units_init'))} → {_pct(r.get('dead_units_end'))}"


def _aim(t) -> str:
    return "none (plain)" if t is None else f"{t:g}"


def _horizon(rows: list[dict]) -> int | None:
    """The task length T the tables' lambda_1 is measured over (the monitor's last lag)."""
    return next((r["lyapunov_windows"]["monitor"][1] for r in rows if r.get("lyapunov_windows")), None)


def _loss_cell(p: gate.Pair, claims: dict, floor: bool) -> str:
    c = claims.get(p.claim_id)
    if c is None:
        return "at the floor: not compared" if floor else "–"
    ci = Interval.from_dict(c["difference"])
    level = "" if math.isclose(ci.level, LEVEL) else f" at {100 * ci.level:.3g}%"
    verdict = ("ReLU lower" if c["sign"] < 0 else "ReLU higher") if c["sign"] else UNDECIDED
    return f"{ci.text()}{level}: {verdict} [`{c['id']}`]"


def _shown(rows: list[dict], quantity: str) -> list[gate.Pair]:
    """Per target: its matched pairs (the tightest ``SHOWN``), else its closest pair."""
    every = gate.pairs(rows, quantity)
    out = []
    for t in gate.targets(rows):
        mine = [p for p in every if p.target == t]
        out += [p for p in mine if p.matched][:SHOWN] or mine[:1]
    return out


def _match_table(rows: list[dict], quantity: str, claims: dict, floor: bool) -> list[str]:
    key = gate.QUANTITIES[quantity]
    every = gate.pairs(rows, quantity)
    chosen = {p.claim_id for p in gate.chosen(rows) if p.quantity == quantity}
    lines = ["", f"**{quantity}**, ReLU − tanh at the end of training:", "",
             f"| target λ₁ | ReLU row | tanh row | {quantity} ReLU / tanh | ReLU − tanh [95% CI] | "
             "matched | dead units ReLU (init → end) | dead units tanh | test loss ReLU / tanh |",
             "|---|---|---|---|---|---|---|---|---|"]
    shown = _shown(rows, quantity)  # no match: the closest pair, to say how far it was
    for t in gate.targets(rows):
        mine = [p for p in every if p.target == t]
        if not mine:
            continue
        matched = [p for p in mine if p.matched]
        for p in (p for p in shown if p.target == t):
            loss = (_loss_cell(p, claims, floor) if p.claim_id in chosen else
                    "– (another pair is compared)" if p.matched else "– (not matched)")
            lines.append(
                f"| {_aim(t)} | {_short(p.relu)} | {_short(p.tanh)} | {_mean(p.relu, key)} / "
                f"{_mean(p.tanh, key)} | {p.ci.text()} | {'**yes**' if p.matched else 'no'} | "
                f"{_dead(p.relu)} | {_dead(p.tanh)} | {loss} |")
        rest = max(0, len(matched) - SHOWN)
        lines.append(f"| {_aim(t)} | {len(matched)} of {len(mine)} pairs matched"
                     + (f" ({rest} more not listed)" if rest > 0 else "") + " | | | | | | | | |")
    return lines


def _mean(r: dict, key: str) -> str:
    """The mean over seeds of a per-seed quantity, shown; −∞ where a seed's is."""
    vals = [v for v in (r.get(key) or {}).values() if v is not None]
    if any(v == -math.inf for v in vals):
        return "−∞"
    return fmt(sum(vals) / len(vals)) if vals else "–"


def _windows(rows: list[dict]) -> str:
    """Where the regulariser's window is the monitor's, and where not."""
    aimed = [r for r in rows if r.get("lyapunov_windows") and gate.regulariser(r)]
    other = [r for r in aimed if r["lyapunov_windows"]["regularised"]]
    if not aimed:
        return ""
    start, stop = aimed[0]["lyapunov_windows"]["monitor"]
    if not other:
        return (f"Every regularised row steered the window λ₁ is measured on: steps {start} to "
                f"{stop - 1} of each sequence (the whole sequence after a burn-in of {start} steps).")
    return (f"The monitor measures λ₁ on steps {start} to {stop - 1}; "
            + ", ".join(f"{_short(r)} steered steps {r['lyapunov_windows']['regularised'][0]} to "
                        f"{r['lyapunov_windows']['regularised'][1] - 1}" for r in other)
            + ": the dose-response table gives λ₁ on both windows.")


def _cell_init(r: dict) -> str:
    return "/".join(r["variant"].split("/")[:2])


def _dose_table(rows: list[dict]) -> list[str]:
    """lambda_1 at the end (monitor's window; the regulariser's beside it where that differs),
    the test loss and the dead units, per cell, arm, k and target, one column per weight."""
    aimed = [r for r in rows if gate.regulariser(r)]
    if not aimed:
        return []
    weights = sorted({gate.regulariser(r)["weight"] for r in aimed})
    by_dose = defaultdict(dict)  # (cell, until, k, target) -> weight -> row
    for r in aimed:
        lc = gate.regulariser(r)
        by_dose[(_cell_init(r), lc.get("until", 0), lc["k"], r["lyapunov_target"])][lc["weight"]] = r
    plain = {_cell_init(r): r for r in rows if not gate.regulariser(r) and gate.nonlinearity(r)}

    def show(r):
        if r is None:
            return "–"
        lam = fmt(r.get("lyapunov_top_end"), 2)
        if r.get("lyapunov_top_window_end") is not None:
            lam += f" (own window {fmt(r['lyapunov_top_window_end'], 2)})"
        geo = Interval.from_dict(r["test_loss_ci"]).text(ratio=False) if r.get("test_loss_ci") else "–"
        return f"{lam}; {geo}; dead {_pct(r.get('dead_units_end'))}"

    lines = ["", "Dose–response, by the regulariser's weight: λ₁ at the end of training (mean over "
             "seeds); test loss, geometric mean [95% CI] as in the tables below; dead units at the "
             "end (mean over seeds). *floss N*: the regulariser on for the first N steps only "
             "(beside the task loss).", "",
             "| cell | on | k | target λ₁ | plain | " + " | ".join(f"weight {w:g}" for w in weights)
             + " |", "|" + "---|" * (5 + len(weights))]
    for (cell, until, k, t), by_w in sorted(by_dose.items()):
        on = f"floss {until}" if until else "always"
        lines.append(f"| {cell} | {on} | {k} | {t:g} | {show(plain.get(cell))} | "
                     + " | ".join(show(by_w.get(w)) for w in weights) + " |")
    return lines


def match_section(results: dict, claims: list[dict]) -> list[str]:
    """Markdown lines of the control study's section, [] for a study without the design."""
    tables = _by_table(results)
    if not tables:
        return []
    by_id = {c["id"]: c for c in claims}
    horizon = _horizon([r for rows in tables.values() for r in rows])
    factor = (f" (at T = {horizon}: ‖∂h_T/∂h_0‖ differs by at most a factor "
              f"e^{gate.TOLERANCE * horizon:.2g} ≈ {math.exp(gate.TOLERANCE * horizon):.2g})"
              if horizon else "")
    lines = ["## Matched dynamics: tanh vs ReLU", "",
             "Does the nonlinearity matter once the dynamics are matched? For each target λ₁ of the "
             "regulariser (and for the rows without it), every pair of a confirmed ReLU row (relu_rnn, "
             "irnn) and a tanh row aimed at it, compared on λ₁ at the end of training over the "
             "confirmation seeds (ReLU − tanh, paired by seed, 95% t-interval). A pair is *matched* "
             f"when that interval lies within ±{gate.TOLERANCE:g} nats per step and no seed diverged"
             f"{factor}; ±{gate.TOLERANCE:g} is also about as tight as the seeds can show "
             "(`match_gate.TOLERANCE` says why). The gradient norm's slope against the lag "
             "(least squares of ln‖∂h_T/∂h_{T−k}‖₂ on k, nats per step) is gated the same way, "
             "separately. Test losses of tanh and ReLU are compared only for a matched pair, per "
             "target the tightest one (chosen on the matched quantity alone, never on a loss), "
             "and only in a table off the floor; no other comparison between the two nonlinearities "
             "is made. The pairs are chosen on the same confirmation seeds their losses are "
             "compared on, so which pair passes the gate is partly the luck of those seeds: a "
             "re-run on other seeds (`--check-claims`) says whether it passes again. A matched λ₁ with half the units dead is a different network: the dead-unit "
             "fractions stand beside each pair.", ""]
    for table, rows in tables.items():
        floor = gate.at_floor(rows)
        confirmed = [r for r in rows if r.get("confirmed", True)]
        below = sum(gate.below_baseline(r).hi < 0 for r in confirmed)
        lines += [f"### {table}: " + (
            f"**at the floor**: none of its {len(confirmed)} confirmed rows has a test loss below "
            "the trivial baseline (95% interval), so no loss claim is drawn from it"
            if floor else f"off the floor: {below} of {len(confirmed)} confirmed rows have a test "
            "loss below the trivial baseline (95% interval)"), ""]
        window = _windows(rows)
        if window:
            lines += [window]
        for quantity in gate.QUANTITIES:
            lines += _match_table(rows, quantity, by_id, floor)
        lines += _dose_table(rows) + [""]
    return lines


def matched_figures(workdir: str, results: dict) -> list[str]:
    """The trajectories (sigma_max, step norm, lambda_1), lag profiles and loss curves of each
    control table's plain rows and the pairs its match table lists for lambda_1 (and the pairs
    compared on the lag slope), as ``figures.py`` draws a table (paths relative to
    ``workdir``)."""
    from rnn_spectra.study.figures import subset_figures

    out = []
    for table, rows in _by_table(results).items():
        keep = {r["variant"] for p in _shown(rows, "λ₁") for r in (p.relu, p.tanh)}
        keep |= {r["variant"] for p in gate.chosen(rows) for r in (p.relu, p.tanh)}
        keep |= {r["variant"] for r in rows if not gate.regulariser(r) and gate.nonlinearity(r)}
        picked = [r for r in rows if r["variant"] in keep]
        out += subset_figures(workdir, f"{table}_matched", picked)
    return out
