"""The comparisons a study states, as claims (``claims.py``) computed from its result rows.

Every comparison is a bootstrap CI of a difference over the confirmation seeds (paired by seed
where both rows ran the same seeds: same data stream, same test set), and its sentence says
"lower" or "higher" only when the CI excludes zero, else "not distinguishable at this budget".
Which row stands for a family is chosen on the pilot's validation loss, never on test data.

Per table: every row against the trivial baseline (and λ₁ against its target where a row was
regularised towards one); within each arm (``arm``: the main one, SGD, matched size, an
intervention) the families' representatives pairwise, the inits within the ReLU and the tanh
family pairwise, and the λ₁ of rows regularised towards a target pairwise; clipping against none within an arm (SGD: test loss, instability events and
the share of seeds diverged, since a diverged seed has no test loss to compare); each arm's row
against the same cell and init in the main arm (SGD: also the share diverged); a matched-size row
against the cell whose parameter count it matches.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict

from rnn_spectra.study.claims import claim
from rnn_spectra.study.stats import UNDECIDED, Interval, diff_ci, mean_ci

FAMILIES = {"irnn": "ReLU", "relu_rnn": "ReLU", "tanh_rnn": "tanh", "lstm": "LSTM", "gru": "GRU"}
FAMILY_ORDER = ("GRU", "LSTM", "ReLU", "tanh")
LOSS, EVENTS, LYAPUNOV = "test loss", "instability events per run", "λ₁ at the end"
DIVERGED = "share of seeds diverged"
SHORT = {EVENTS: "events", DIVERGED: "diverged", LOSS: "loss", LYAPUNOV: "λ₁"}


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


def difference(a: dict, b: dict, key: str = "test_losses", seed: int = 0) -> Interval:
    """mean(a) - mean(b) over the seeds, paired when both rows ran the same seeds."""
    xa, xb = a.get(key) or {}, b.get(key) or {}
    if xa and set(xa) == set(xb):
        seeds = sorted(xa)
        return diff_ci([xa[s] for s in seeds], [xb[s] for s in seeds], paired=True, seed=seed)
    return diff_ci(list(xa.values()), list(xb.values()), seed=seed)


def _learning(*rows) -> dict:
    return {r["variant"]: [r.get("seeds_still_learning", 0), r["seeds"]] for r in rows}


def _diverged(*rows) -> dict:
    """Seeds without a test loss (diverged): left out of every mean and difference, and said."""
    return {r["variant"]: [r.get("seeds_diverged", 0), r["seeds"]] for r in rows}


def _vs(table: str, a: dict, b: dict, quantity: str = LOSS, key: str = "test_losses") -> dict:
    ci = difference(a, b, key)
    c = claim(f"{table}|{a['variant']}|{b['variant']}|{quantity}",
              f"{table}: {a['variant']} vs {b['variant']}, {quantity}", quantity,
              a["variant"], b["variant"], ci)
    return {**c, "still_learning": _learning(a, b), "diverged": _diverged(a, b)}


def _vs_baseline(table: str, r: dict) -> dict:
    """Paired with each seed's own test set where the baseline varies with the sample."""
    base, own = r["baseline"], r.get("test_baselines") or {}
    ci = mean_ci([v - own.get(s, base) for s, v in (r.get("test_losses") or {}).items()
                  if v is not None])
    c = claim(f"{table}|{r['variant']}|baseline|{LOSS}", f"{table}: {r['variant']} vs the trivial "
              f"baseline ({base:.4g}), {LOSS}", LOSS, r["variant"], "baseline", ci)
    return {**c, "still_learning": _learning(r), "diverged": _diverged(r)}


def _vs_target(table: str, r: dict) -> dict | None:
    """λ₁ at the end against the regulariser's target, for a row that had one."""
    target, lam = r.get("lyapunov_target"), r.get("lyapunov_top_end_by_seed") or {}
    if target is None or not lam:
        return None
    ci = mean_ci([v - target for v in lam.values() if v is not None])
    c = claim(f"{table}|{r['variant']}|target|{LYAPUNOV}", f"{table}: {r['variant']}, "
              f"{LYAPUNOV} vs its target {target:g}", LYAPUNOV, r["variant"], f"the target {target:g}", ci)
    return {**c, "still_learning": _learning(r), "diverged": _diverged(r)}


def _families(table: str, rows: list[dict]) -> list[dict]:
    """The families' representatives (lowest pilot validation loss) pairwise, then the inits
    within the ReLU and the tanh family pairwise (by name: the same id in every run)."""
    reps, out = {}, []
    for r in rows:
        f = family(r["variant"])
        if f not in reps or _pick(r) < _pick(reps[f]):
            reps[f] = r
    fams = [f for f in FAMILY_ORDER if f in reps] + sorted(set(reps) - set(FAMILY_ORDER))
    tag = arm(rows[0])
    for fa, fb in itertools.combinations(fams, 2):
        c = _vs(table, reps[fa], reps[fb])
        a, b = (f"best {fa}" + (f" ({tag})" if tag else ""), f"best {fb}" + (f" ({tag})" if tag else ""))
        c.update(id=f"{table}|family {fa}{'/' + tag if tag else ''}|family {fb}|{LOSS}", a=a, b=b,
                 text=f"{table}: {a} ({reps[fa]['variant']}) vs {b} ({reps[fb]['variant']}), "
                      f"chosen on validation, {LOSS}")
        out.append(c)
    for f in ("ReLU", "tanh"):
        same = sorted((r for r in rows if family(r["variant"]) == f), key=lambda r: r["variant"])
        out += [_vs(table, a, b) for a, b in itertools.combinations(same, 2)]
    return out


def build_claims(results: dict) -> list[dict]:
    by_table = defaultdict(list)
    for r in results["rows"]:
        by_table[r["table"]].append(r)
    out = []
    for table, rows in by_table.items():
        out += [_vs_baseline(table, r) for r in rows]
        out += [c for c in (_vs_target(table, r) for r in rows) if c]
        arms = defaultdict(list)
        for r in rows:
            arms[arm(r)].append(r)
        for tag in sorted(arms):
            out += _families(table, arms[tag])
            # regularised towards the same λ₁: did the cells end equally close to it?
            aimed = sorted((r for r in arms[tag] if r.get("lyapunov_target") is not None
                            and r.get("lyapunov_top_end_by_seed")), key=lambda r: r["variant"])
            out += [_vs(table, a, b, LYAPUNOV, "lyapunov_top_end_by_seed")
                    for a, b in itertools.combinations(aimed, 2)]
        main = arms.get("", [])
        by_name = {r["variant"]: r for r in rows}
        for r in rows:
            if not arm(r):
                continue
            if r["clip"] != "none":
                none = by_name.get(r["variant"].rsplit("/clip=", 1)[0] + "/clip=none")
                if none:  # clipping against none, in the same arm
                    out.append(_vs(table, r, none))
                    if r.get("optimizer") == "sgd":
                        out.append(_vs(table, r, none, EVENTS, "instability_events"))
                        out.append(_vs(table, r, none, DIVERGED, "diverged_by_seed"))
            # the arm against the main arm, same cell and init (and clipping, where it has one)
            same = next((x for x in main if base_name(x["variant"]) == base_name(r["variant"])
                         and x["clip"] == r["clip"]), None)
            if same is None and r["clip"] == "none":
                same = next((x for x in main if base_name(x["variant"]) == base_name(r["variant"])), None)
            if same is not None:
                out.append(_vs(table, r, same))
                if r.get("optimizer") == "sgd" and same.get("optimizer") != "sgd":
                    out.append(_vs(table, r, same, DIVERGED, "diverged_by_seed"))
            if r.get("match_params_of"):
                ref = next((x for x in main if x["variant"].split("/")[0] == r["match_params_of"]), None)
                if ref is not None:
                    out.append(_vs(table, r, ref))
    return list({c["id"]: c for c in out}.values())  # a pair reached twice is one claim


def sentence(c: dict) -> str:
    """The claim in words, with its CI; 'lower'/'higher' only when the CI excludes zero."""
    ci = Interval(**c["difference"])
    what = {EVENTS: "events", DIVERGED: "share of seeds diverged"}.get(c["quantity"], c["quantity"])
    if c["sign"] == 0:
        body = f"{c['a']} vs {c['b']} ({what}): {UNDECIDED}; difference {ci.text()}"
    else:
        body = (f"{c['a']} has {'lower' if c['sign'] < 0 else 'higher'} {what} than {c['b']}: "
                f"difference {ci.text()}")
    learning = [f"{v} {k}/{n}" for v, (k, n) in c.get("still_learning", {}).items() if k]
    if learning:
        body += " (still learning at the step cap: " + ", ".join(learning) + " seeds)"
    diverged = [f"{v} {k}/{n}" for v, (k, n) in c.get("diverged", {}).items() if k]
    if diverged:
        body += " (diverged, left out: " + ", ".join(diverged) + " seeds)"
    return body + "."
