"""The comparisons a study states, as claims (``claims.py``) computed from its result rows.

Every comparison goes through ``stats.difference_ci`` (or its one-sample and share siblings):
test losses as ratios on the log scale, paired by seed where both rows ran the same seeds, a
diverged seed counted as the worst outcome. Comparisons are grouped in *families* (one table,
one kind of comparison); within each family Benjamini–Hochberg at q = 5% decides which are
stated, and a decided claim shows its interval at the family's adjusted level (Benjamini &
Yekutieli's false-coverage-rate intervals). Which row stands for a family of cells is chosen on
the pilot's validation loss, never on test data.

Per table: every row against the trivial baseline (and λ₁ against its target where a row was
regularised towards one); within each arm (``arm``: the main one, SGD, matched size, an
intervention) the families' representatives pairwise, the inits within the ReLU and the tanh
family pairwise, and the λ₁ of rows regularised towards a target pairwise; clipping against
none within an arm (SGD: also instability events and the share of seeds diverged); each arm's
row against the same cell and init in the main arm (SGD: also the share diverged); a
matched-size row against the cell whose parameter count it matches; per target of the time to
a target (``time_to_target.py``), a family of its own: the main arm's representatives pairwise
on the steps their seeds took to reach it, a seed that never did counted as the worst. Per task
with several lengths: whether the ratio between two families' representatives changes with the
length (the difference of the per-seed log ratios: an effect that "depends on T" needs its own
interval). In a table of the control design (``match_gate.applies``) tanh and ReLU are compared
on loss only where the match gate pairs them (``match_gate.chosen``), and a table at the floor
keeps no loss comparison but those against the baseline.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections import defaultdict
from collections.abc import Callable

from rnn_spectra.study import time_to_target as ttt
from rnn_spectra.study import match_gate
from rnn_spectra.study.claims import claim
from rnn_spectra.study.stats import (FDR, LEVEL, Interval, adjusted_level, undecided_level,
                                     benjamini_hochberg, difference_ci, one_sample_ci,
                                     share_difference)

FAMILIES = {"irnn": "ReLU", "relu_rnn": "ReLU", "tanh_rnn": "tanh", "lstm": "LSTM", "gru": "GRU",
            "indrnn": "IndRNN", "antisymmetric": "AntisymmetricRNN", "exprnn": "expRNN"}
FAMILY_ORDER = ("GRU", "LSTM", "ReLU", "tanh", "IndRNN", "AntisymmetricRNN", "expRNN")
LOSS, EVENTS, LYAPUNOV = "test loss", "instability events per run", "λ₁ at the end"
RATIO = "test-loss ratio"  # an interaction: one ratio of test losses against another
DIVERGED = "share of seeds diverged"
STEPS_TO = "steps to"  # "steps to 0.5× baseline": time to a target (time_to_target.py)
SHORT = {EVENTS: "events", DIVERGED: "diverged", LOSS: "loss", LYAPUNOV: "λ₁", RATIO: "ratio"}


def family(variant: str) -> str:
    cell = variant.split("/")[0]
    return FAMILIES.get(cell, cell)


def base_name(variant: str) -> str:
    """The variant without its clipping and arm tags: ``relu_rnn/normal``."""
    return "/".join(variant.split("/")[:2])


def arm(r: dict) -> str:
    """What a row changes besides cell and init: "" (the main arm: Adam, the preset's hidden
    size), "sgd", "params=lstm", an intervention's tag, ...: the tags after cell/init."""
    return "/".join(r["variant"].split("/clip=")[0].split("/")[2:])


def _pick(r: dict) -> float:
    v = r.get("pilot_val_loss_mean", r.get("val_loss_mean"))
    return v if v is not None and math.isfinite(v) else math.inf


# ----------------------------------------------------------------------------- outcomes


def outcomes(r: dict, key: str = "test_losses") -> dict[str, float | None]:
    """Seed -> outcome; for test losses a diverged seed is ``inf`` (the worst), whatever loss
    its last good parameters had."""
    values = dict(r.get(key) or {})
    if key == "test_losses":
        for s, d in (r.get("diverged_by_seed") or {}).items():
            if d:
                values[s] = math.inf
    return values


def _scale(key: str) -> str:
    return "log" if key == "test_losses" else "linear"


def difference(a: dict, b: dict, key: str = "test_losses", level: float = LEVEL) -> Interval:
    """A vs B over the seeds (a ratio for losses), paired when both rows ran the same seeds."""
    if key == "diverged_by_seed":
        xa, xb = a.get(key) or {}, b.get(key) or {}
        return share_difference(int(sum(xa.values())), len(xa), int(sum(xb.values())), len(xb),
                                level=level)
    return _by_seed(outcomes(a, key), outcomes(b, key), level, _scale(key))


def _by_seed(xa: dict, xb: dict, level: float, scale: str) -> Interval:
    """Seed -> outcome of A and of B, paired when both ran the same seeds."""
    if xa and set(xa) == set(xb):
        seeds = sorted(xa)
        return difference_ci([xa[s] for s in seeds], [xb[s] for s in seeds], paired=True,
                             level=level, scale=scale)
    return difference_ci(list(xa.values()), list(xb.values()), paired=False, level=level,
                         scale=scale)


# ----------------------------------------------------------------------------- pending claims


@dataclasses.dataclass
class Pending:
    """A comparison before its family is known: ``compute(level)`` gives its interval."""

    cid: str
    text: str
    quantity: str
    a: str
    b: str
    family: str
    compute: Callable[[float], Interval]
    extra: dict


def _learning(*rows) -> dict:
    return {r["variant"]: [r.get("seeds_still_learning", 0), r["seeds"]] for r in rows}


def _diverged(*rows) -> dict:
    """Seeds that diverged: counted as the worst outcome in every comparison, and said."""
    return {r["variant"]: [r.get("seeds_diverged", 0), r["seeds"]] for r in rows}


def _vs(table: str, kind: str, a: dict, b: dict, quantity: str = LOSS,
        key: str = "test_losses") -> Pending:
    return Pending(f"{table}|{a['variant']}|{b['variant']}|{quantity}",
                   f"{table}: {a['variant']} vs {b['variant']}, {quantity}", quantity,
                   a["variant"], b["variant"], f"{table}|{kind}",
                   lambda level: difference(a, b, key, level),
                   {"still_learning": _learning(a, b), "diverged": _diverged(a, b)})


def _vs_baseline(table: str, r: dict) -> Pending:
    """Each seed against its own test set's baseline (the baseline varies with the sample)."""
    base, own = r["baseline"], r.get("test_baselines") or {}
    values = outcomes(r)
    seeds = sorted(values)

    def compute(level):
        return one_sample_ci([values[s] for s in seeds], [own.get(s, base) for s in seeds],
                             level=level)

    return Pending(f"{table}|{r['variant']}|baseline|{LOSS}", f"{table}: {r['variant']} vs the "
                   f"trivial baseline ({base:.4g}), {LOSS}", LOSS, r["variant"], "baseline",
                   f"{table}|vs baseline", compute,
                   {"still_learning": _learning(r), "diverged": _diverged(r)})


def _vs_target(table: str, r: dict) -> Pending | None:
    """λ₁ at the end against the regulariser's target, for a row that had one."""
    target, lam = r.get("lyapunov_target"), r.get("lyapunov_top_end_by_seed") or {}
    if target is None or not lam:
        return None
    values = [v for v in lam.values() if v is not None]
    return Pending(f"{table}|{r['variant']}|target|{LYAPUNOV}", f"{table}: {r['variant']}, "
                   f"{LYAPUNOV} vs its target {target:g}", LYAPUNOV, r["variant"],
                   f"the target {target:g}", f"{table}|λ₁ vs target",
                   lambda level: one_sample_ci(values, target, level=level, scale="linear"),
                   {"still_learning": _learning(r), "diverged": _diverged(r)})


def representatives(rows: list[dict]) -> dict[str, dict]:
    """Family -> its row with the lowest pilot validation loss (never test data)."""
    reps = {}
    for r in rows:
        f = family(r["variant"])
        if f not in reps or _pick(r) < _pick(reps[f]):
            reps[f] = r
    return reps


def _ordered(reps: dict) -> list[str]:
    return [f for f in FAMILY_ORDER if f in reps] + sorted(set(reps) - set(FAMILY_ORDER))


def _families(table: str, rows: list[dict], gated: bool = False) -> list[Pending]:
    """The families' representatives pairwise, then the inits within the ReLU and the tanh
    family pairwise (by name: the same id in every run). ``gated``: not tanh against ReLU (the
    match gate compares them, ``_matched``)."""
    reps, out = representatives(rows), []
    tag = arm(rows[0])
    for fa, fb in itertools.combinations(_ordered(reps), 2):
        if gated and {fa, fb} == {"ReLU", "tanh"}:
            continue
        p = _vs(table, "families", reps[fa], reps[fb])
        a, b = (f"best {fa}" + (f" ({tag})" if tag else ""), f"best {fb}" + (f" ({tag})" if tag else ""))
        p.cid = f"{table}|family {fa}{'/' + tag if tag else ''}|family {fb}|{LOSS}"
        p.a, p.b = a, b
        p.text = (f"{table}: {a} ({reps[fa]['variant']}) vs {b} ({reps[fb]['variant']}), "
                  f"chosen on validation, {LOSS}")
        out.append(p)
    for f in ("ReLU", "tanh"):
        same = sorted((r for r in rows if family(r["variant"]) == f), key=lambda r: r["variant"])
        out += [_vs(table, "inits", a, b) for a, b in itertools.combinations(same, 2)]
    return out


def steps_to(fraction: float) -> str:
    """The quantity of a time-to-target claim."""
    return f"{STEPS_TO} {fraction:g}× baseline"


def _sooner(table: str, rows: list[dict]) -> list[Pending]:
    """Per target, a family of its own: the families' representatives (the loss comparisons'
    rows) pairwise on their seeds' steps to the target, ratio A/B; a seed that never reached it
    is ``inf`` (the worst: a row that missed it more often is never called sooner)."""
    reps, out = representatives(rows), []
    fracs = [t["fraction"] for t in (rows[0].get("time_to_target") or [])] if rows else []
    for f in fracs:
        quantity = steps_to(f)
        times = {name: next((t for t in r.get("time_to_target") or [] if t["fraction"] == f), None)
                 for name, r in reps.items()}
        for fa, fb in itertools.combinations([x for x in _ordered(reps) if times[x]], 2):
            ta, tb = times[fa], times[fb]
            out.append(Pending(
                f"{table}|family {fa}|family {fb}|{quantity}",
                f"{table}: best {fa} ({reps[fa]['variant']}) vs best {fb} ({reps[fb]['variant']}), "
                f"chosen on validation, {quantity}", quantity, f"best {fa}", f"best {fb}",
                f"{table}|{quantity}",
                lambda level, ta=ta, tb=tb: _by_seed(ttt.outcomes(ta), ttt.outcomes(tb), level, "log"),
                {"not_reached": {reps[x]["variant"]: [t["seeds"] - t["reached"], t["seeds"]]
                                 for x, t in ((fa, ta), (fb, tb))}}))
    return out


def _interactions(by_table: dict[str, list[dict]]) -> list[Pending]:
    """Per task, for each pair of lengths and each pair of families (main arm): the change of
    the log ratio best A / best B between the lengths, over the seeds of each length."""
    tasks = defaultdict(list)
    for table, rows in by_table.items():
        # a ladder's budgets are not lengths: its tables (tuned_on another) stay out
        if "_T" in table and rows[0].get("task") and not rows[0].get("tuned_on"):
            tasks[rows[0]["task"]].append(table)
    out = []
    for task, tables in tasks.items():
        reps = {t: representatives([r for r in by_table[t] if not arm(r)]) for t in tables}
        for t1, t2 in itertools.combinations(tables, 2):
            for fa, fb in itertools.combinations(_ordered(reps[t1]), 2):
                if fa not in reps[t2] or fb not in reps[t2]:
                    continue
                c1 = _contrast(reps[t1][fa], reps[t1][fb])
                c2 = _contrast(reps[t2][fa], reps[t2][fb])
                if not c1 or not c2:
                    continue
                l1, l2 = t1.split("_T")[-1], t2.split("_T")[-1]
                out.append(Pending(
                    f"{task}|interaction|family {fa}|family {fb}|T={l1}|T={l2}|{LOSS}",
                    f"{task}: does the ratio best {fa} / best {fb} change from T = {l1} to "
                    f"T = {l2}? (ratio of the two ratios), {LOSS}", RATIO,
                    f"best {fa} / best {fb} at T = {l1}", f"at T = {l2}", f"{task}|interaction",
                    lambda level, c1=c1, c2=c2: dataclasses.replace(
                        difference_ci(c1, c2, paired=False, level=level, scale="linear"),
                        scale="log"),
                    {"still_learning": _learning(reps[t1][fa], reps[t1][fb], reps[t2][fa],
                                                 reps[t2][fb])}))
    return out


def _contrast(a: dict, b: dict) -> list[float]:
    """Per seed (the seeds both rows ran): log(A) - log(B); a diverged side is infinite, two
    diverged sides a tie."""
    xa, xb = outcomes(a), outcomes(b)
    out = []
    for s in sorted(set(xa) & set(xb)):
        va, vb = xa[s], xb[s]
        if va is None or vb is None or (isinstance(va, float) and math.isnan(va)) \
                or (isinstance(vb, float) and math.isnan(vb)) or va <= 0 or vb <= 0:
            continue
        la, lb = math.log(va), math.log(vb)
        out.append(0.0 if la == lb == math.inf else la - lb)
    return out


def _matched(table: str, rows: list[dict]) -> list[Pending]:
    """The loss comparisons between tanh and ReLU that the match gate admits (``match_gate``):
    per matched quantity and target, the tightest matched pair."""
    out = []
    for m in match_gate.chosen(rows):
        p = _vs(table, f"matched {m.quantity}", m.relu, m.tanh)
        aim = "no regulariser" if m.target is None else f"target λ₁ {m.target:g}"
        p.cid = m.claim_id
        p.text = (f"{table}: {m.relu['variant']} vs {m.tanh['variant']} ({aim}), {LOSS}, their "
                  f"{m.quantity} matched within ±{match_gate.TOLERANCE:g} ({m.ci.text()})")
        out.append(p)
    return out


def _pending(results: dict) -> list[Pending]:
    by_table = defaultdict(list)
    for r in results["rows"]:
        by_table[r["table"]].append(r)
    out, gated = [], {t for t, rows in by_table.items() if match_gate.applies(rows)}
    for table, rows in by_table.items():
        start = len(out)
        out += [_vs_baseline(table, r) for r in rows]
        out += [p for p in (_vs_target(table, r) for r in rows) if p]
        arms = defaultdict(list)
        for r in rows:
            arms[arm(r)].append(r)
        for tag in sorted(arms):
            out += _families(table, arms[tag], table in gated)
            # regularised towards the same λ₁: did the cells end equally close to it?
            aimed = sorted((r for r in arms[tag] if r.get("lyapunov_target") is not None
                            and r.get("lyapunov_top_end_by_seed")), key=lambda r: r["variant"])
            out += [_vs(table, "λ₁ pairwise", a, b, LYAPUNOV, "lyapunov_top_end_by_seed")
                    for a, b in itertools.combinations(aimed, 2)]
        main = arms.get("", [])
        out += _sooner(table, main)
        by_name = {r["variant"]: r for r in rows}
        for r in rows:
            if not arm(r):
                continue
            if r["clip"] != "none":
                none = by_name.get(r["variant"].rsplit("/clip=", 1)[0] + "/clip=none")
                if none:  # clipping against none, in the same arm
                    out.append(_vs(table, "clipping", r, none))
                    if r.get("optimizer") == "sgd":
                        out.append(_vs(table, "clipping", r, none, EVENTS, "instability_events"))
                        out.append(_vs(table, "clipping", r, none, DIVERGED, "diverged_by_seed"))
            # the arm against the main arm, same cell and init (and clipping, where the main
            # arm has a row per mode; where its pilot chose the mode, against that row)
            same = next((x for x in main if base_name(x["variant"]) == base_name(r["variant"])
                         and (x["clip"] == r["clip"] or x.get("clip_chosen"))), None)
            if same is None and r["clip"] == "none":
                same = next((x for x in main if base_name(x["variant"]) == base_name(r["variant"])), None)
            if same is not None:
                out.append(_vs(table, "arm vs main", r, same))
                if r.get("optimizer") == "sgd" and same.get("optimizer") != "sgd":
                    out.append(_vs(table, "arm vs main", r, same, DIVERGED, "diverged_by_seed"))
            if r.get("match_params_of"):
                ref = next((x for x in main if x["variant"].split("/")[0] == r["match_params_of"]), None)
                if ref is not None:
                    out.append(_vs(table, "matched size", r, ref))
        if table in gated:  # the control design: tanh vs ReLU only where matched, off the floor
            out += _matched(table, rows)
            if match_gate.at_floor(rows):
                out[start:] = [p for p in out[start:] if p.quantity != LOSS or p.b == "baseline"]
    out += _interactions({t: rows for t, rows in by_table.items() if t not in gated})
    return list({p.cid: p for p in out}.values())  # a pair reached twice is one claim


def build_claims(results: dict, q: float = FDR) -> list[dict]:
    """Every comparison as a claim; within each family Benjamini–Hochberg at ``q`` decides, and
    the decided ones carry their interval at the family's adjusted level, the undecided ones at
    the level at which it left them undecided (so that their intervals contain zero)."""
    by_family = defaultdict(list)
    for p in _pending(results):
        by_family[p.family].append(p)
    out = []
    for fam, items in by_family.items():
        first = [p.compute(LEVEL) for p in items]
        decided, r = benjamini_hochberg([ci.p for ci in first], q)
        level = adjusted_level(r, len(items), q)
        level_undecided = undecided_level(r, len(items), q)
        for p, ci, d in zip(items, first, decided):
            if d:
                shown = p.compute(level)
            else:
                shown = ci if level_undecided == LEVEL else p.compute(level_undecided)
            # the side its interval lies on (a rank estimate can sit at 0 with the interval
            # off it); for a share, decided by Boschloo's p, the estimate's side
            sign = 0 if not d else (-1 if shown.hi < 0 else 1 if shown.lo > 0 else
                                    (-1 if shown.estimate < 0 else 1))
            out.append({**claim(p.cid, p.text, p.quantity, p.a, p.b, shown, sign=sign),
                        "family": fam, "family_size": len(items), "family_decided": r, **p.extra})
    return out


def multiplicity(claims: list[dict], q: float = FDR) -> dict:
    """How many comparisons were made and what chance alone would decide."""
    families = {c.get("family") for c in claims}
    decided = sum(bool(c["sign"]) for c in claims)
    return {"comparisons": len(claims), "families": len(families), "decided": decided,
            "by_chance_unadjusted": (1 - LEVEL) * len(claims), "fdr": q,
            "expected_false_among_decided": q * decided}
