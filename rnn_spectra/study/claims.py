"""A study's findings as checkable records (``claims.json``), and the check of a published set
of claims against another run of the study (other seeds, another machine).

A claim compares two quantities (A vs B: a ratio of losses or a difference, with its interval
over seeds, ``stats.py``): its ``sign`` is -1 (A lower), +1 (A higher) or 0 (not decided in its
family: "not distinguishable at this budget", which claims nothing). Against a new study a
decided claim HOLDS when the new study decides it with the same sign (Benjamini–Hochberg over
the checked claims), FLIPS when it decides it the other way, and is UNDECIDED otherwise. The check also says how many new estimates fall
inside the reference intervals, next to what calibrated intervals would give.
"""

from __future__ import annotations

import hashlib
import json
import math
import os

from rnn_spectra import workdir as wd
from rnn_spectra.errors import WorkdirError
from rnn_spectra.study.stats import FDR, LEVEL, Interval, benjamini_hochberg, expected_capture
from rnn_spectra.study.stats import UNDECIDED as NOT_DISTINGUISHABLE

CLAIMS = "claims.json"
HOLDS, FLIPS, UNDECIDED = "HOLDS", "FLIPS", "UNDECIDED"


def claim(cid: str, text: str, quantity: str, a: str, b: str, ci: Interval,
          sign: int | None = None) -> dict:
    """One record: ``a`` vs ``b`` on ``quantity`` (``ci``); ``sign`` as decided in its family,
    else from the interval alone."""
    if sign is None:
        sign = 0 if not ci.excludes_zero() else (-1 if ci.hi < 0 else 1)
    return {"id": cid, "text": text, "quantity": quantity, "a": a, "b": b,
            "difference": ci.as_dict(), "sign": sign}


def write_claims(workdir: str, claims: list[dict], about: dict | None = None) -> str:
    path = wd.path(workdir, CLAIMS)
    wd.write_json(path, {**(about or {}), "claims": claims})
    return path


def read_claims(directory: str) -> list[dict]:
    """The claims of ``directory``/claims.json, each record checked (one line naming the first
    bad one)."""
    return read_claims_file(directory)["claims"]


def read_claims_file(directory: str) -> dict:
    """claims.json as written: ``claims`` and what the study was (preset, design, finished)."""
    if not directory:
        raise WorkdirError("--check-claims needs a directory that holds a claims.json "
                           "(a study workdir, or docs/ for the published one)")
    path = os.path.join(directory, CLAIMS)
    if not os.path.isfile(path):
        raise WorkdirError(f"{path} does not exist; claims come from `rnn-spectra report` "
                           "(a published study keeps them in docs/)")
    data = wd.read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("claims"), list):
        raise WorkdirError(f"{path} is not a claims file (no 'claims' list)")
    for i, c in enumerate(data["claims"]):
        problem = _record_problem(c)
        if problem:
            name = f"record {i}" + (f" ({c['id']!r})" if isinstance(c, dict) and "id" in c else "")
            raise WorkdirError(f"{path}: {name} {problem}; each claim is an object with a string "
                               "'id' and 'text', a 'difference' object (estimate, lo, hi, n numbers) "
                               "and a 'sign' of -1, 0 or 1")
    return data


def _record_problem(c) -> str | None:
    if not isinstance(c, dict):
        return f"is a {type(c).__name__}, not an object"
    for key in ("id", "text"):
        if not isinstance(c.get(key), str):
            return f"has no string {key!r}"
    if "sign" not in c:
        return "has no 'sign'"
    if type(c["sign"]) is not int or c["sign"] not in (-1, 0, 1):
        return f"has sign {c['sign']!r}"
    d = c.get("difference")
    if not isinstance(d, dict):
        return "has no 'difference' object"
    try:
        ci = Interval.from_dict(d)
        bounds = [ci.estimate, ci.lo, ci.hi, ci.n]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bounds):
            return f"has a difference that is not numbers (estimate, lo, hi, n): {d}"
    except (KeyError, TypeError, ValueError):
        return f"has a difference that is not numbers (estimate, lo, hi, n): {d}"
    return None


def check_compatible(reference_dir: str, workdir: str) -> list[dict]:
    """The reference's claims, if a check against the study in ``workdir`` means anything: both
    finished (a study stopped in the confirmation reports pilot seeds for rows not yet
    confirmed), and the same preset and design (another grid makes other claims). Else one line."""
    ref = read_claims_file(reference_dir)
    path = os.path.join(reference_dir, CLAIMS)
    study_path = wd.path(workdir, "study.json")
    study = wd.read_json(study_path) if os.path.isfile(study_path) else {}
    if not ref.get("finished"):
        raise WorkdirError(f"{path} comes from a study that had not finished; check against the "
                           "claims of a finished study")
    if not study.get("finished"):
        raise WorkdirError(f"{workdir}: the study has not finished (re-run its `study` command to "
                           "complete it); a claims check needs every row confirmed")
    if ref.get("preset") != study.get("preset"):
        raise WorkdirError(f"{path} comes from preset {ref.get('preset')!r} and {workdir} from "
                           f"{study.get('preset')!r}; claims are checked against the same preset")
    if ref.get("design") and ref["design"] != design_hash(study):
        raise WorkdirError(f"{path} comes from another design of preset {ref.get('preset')!r} "
                           f"({ref['design']} vs {design_hash(study)}: a changed grid, seeds or "
                           "budget); claims are checked against the same design")
    return ref["claims"]


def design_hash(study: dict) -> str | None:
    """What a study's claims depend on besides its seeds: its preset's fields, hashed."""
    fields = study.get("preset_fields")
    if fields is None:
        return None
    text = json.dumps(fields, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def check(reference: list[dict], new: list[dict], q: float = FDR) -> list[dict]:
    """Per decided reference claim: its verdict on ``new`` (HOLDS / FLIPS / UNDECIDED).

    The replication tests exactly the claims the reference decided, no others: Benjamini–
    Hochberg at ``q`` over those claims' p-values in the new study (not over the new study's
    own families, which would charge it for comparisons nobody is checking). A new record
    without a p-value (written before they were recorded) keeps its own sign."""
    by_id = {c["id"]: c for c in new}
    refs = [r for r in reference if r.get("sign")]  # "not distinguishable" claims nothing
    gots = [by_id.get(r["id"]) for r in refs]
    ps = [Interval.from_dict(g["difference"]).p if g else None for g in gots]
    decided, _ = benjamini_hochberg([p for p in ps if p is not None], q)
    tested = iter(decided)
    out = []
    for ref, got, p in zip(refs, gots, ps):
        if got is None:
            sign = 0
        elif p is None:
            sign = got.get("sign") or 0
        else:
            est = Interval.from_dict(got["difference"]).estimate
            sign = (-1 if est < 0 else 1) if next(tested) else 0
        result = UNDECIDED if not sign else (HOLDS if sign == ref["sign"] else FLIPS)
        out.append({"id": ref["id"], "text": ref["text"], "verdict": result,
                    "reference": ref["difference"], "new": got["difference"] if got else None})
    return out


def capture(rows: list[dict]) -> tuple[int, int, float]:
    """Of the checked claims with a new estimate on the reference's scale: how many new
    estimates fall inside the reference interval, of how many, and how many a calibrated
    interval at the same levels and seed counts would capture on average (Cumming & Maillardet
    2006: about 83% at 95% for many seeds, more for few)."""
    inside, total, expected = 0, 0, 0.0
    for r in rows:
        ref = Interval.from_dict(r["reference"])
        new = Interval.from_dict(r["new"]) if r["new"] else None
        if new is None or new.scale != ref.scale or not math.isfinite(new.estimate):
            continue
        total += 1
        inside += ref.lo <= new.estimate <= ref.hi
        expected += expected_capture(min(ref.n, ref.n_b or ref.n), ref.level)
    return inside, total, (expected / total if total else math.nan)


def check_header(reference_dir: str, workdir: str) -> str:
    """Where the checked claims came from and what the checking study was, from their records."""
    ref = wd.read_json(os.path.join(reference_dir, CLAIMS))
    study = wd.read_json(wd.path(workdir, "study.json")) if os.path.isfile(
        wd.path(workdir, "study.json")) else {}
    wall = study.get("wall_time_s")
    return (f"Claims of `{reference_dir}` (preset `{ref.get('preset', '?')}`, {ref.get('machine', '?')}, "
            f"finished {ref.get('finished', '?')}) checked against `{workdir}` (preset "
            f"`{study.get('preset', '?')}`, every seed + {study.get('seed_offset', 0)}, "
            f"{len(study.get('members', []))} trained members, {study.get('machine', '?')}"
            + (f", study wall time {wall:.0f} s" if isinstance(wall, (int, float)) else "") + ").\n\n"
            "Per decided reference claim: HOLDS (decided again on the same side), FLIPS (decided on "
            "the other side) or UNDECIDED (not decided again: not confirmed at this budget). The "
            f"new study decides by Benjamini–Hochberg at q = {100 * FDR:g}% over the checked claims' "
            "p-values only. A reference claim that was *not distinguishable* claims nothing and is "
            "not listed.")


def _not_made(claim_id: str) -> str:
    """Why the new study has no such claim: a gated loss comparison (``match_gate``) exists
    only where the pair passed the gate in that run; any other claim is simply missing."""
    if "|matched " in claim_id:
        return "not made: the pair did not pass the match gate on these seeds"
    return "missing"


def render_check(rows: list[dict]) -> str:
    lines = ["| claim | id | verdict | reference [interval] | new [interval] |", "|---|---|---|---|---|"]
    for r in rows:
        ref = Interval.from_dict(r["reference"])
        new = Interval.from_dict(r["new"]) if r["new"] else None
        lines.append(f"| {r['text']} | `{r['id']}` | {r['verdict']} | {ref.text()} | "
                     f"{new.text() if new else _not_made(r['id'])} |")
    counts = {v: sum(r["verdict"] == v for r in rows) for v in (HOLDS, FLIPS, UNDECIDED)}
    lines.append("")
    lines.append(f"{counts[HOLDS]} hold, {counts[FLIPS]} flip, {counts[UNDECIDED]} undecided "
                 f"of {len(rows)} decided claims.")
    inside, total, expected = capture(rows)
    if total:
        lines.append(f"{inside} of {total} new estimates ({100 * inside / total:.0f}%) fall inside "
                     f"the reference interval; calibrated intervals at these levels and seed counts "
                     f"would capture about {100 * expected:.0f}% (Cumming & Maillardet 2006).")
    return "\n".join(lines)


def render_new_gated(reference: list[dict], new: list[dict]) -> str:
    """The gated loss comparisons (``match_gate``) the new study made on pairs the reference did
    not compare: which pairs pass the gate depends on the seeds, so a replication that only said
    "not made" for the reference's pairs would hide what the new seeds say instead."""
    seen = {c["id"] for c in reference}
    extra = [c for c in new if "|matched " in c["id"] and c["id"] not in seen]
    if not extra:
        return ""
    lines = ["", "", "Gated comparisons the new study made on pairs the reference did not compare "
             "(decided within the new study's own families; not checks of a reference claim):", "",
             "| claim | id | new [interval] |", "|---|---|---|"]
    for c in extra:
        iv = Interval.from_dict(c["difference"])
        level = "" if math.isclose(iv.level, LEVEL) else f" at {100 * iv.level:.3g}%"
        lines.append(f"| {c['text']} | `{c['id']}` | {iv.text()}{level}"
                     f"{'' if c.get('sign') else ': ' + NOT_DISTINGUISHABLE} |")
    return "\n".join(lines)


def check_study(reference_dir: str, reference: list[dict], workdir: str) -> tuple[str, bool]:
    """``reference`` (the claims of ``reference_dir``) checked against the study in ``workdir``:
    the table, also written to WORKDIR/claims_check.md, and whether any claim flips."""
    new = read_claims(workdir)
    rows = check(reference, new)
    text = render_check(rows) + render_new_gated(reference, new)
    wd.write_text(wd.path(workdir, "claims_check.md"),
                  f"{check_header(reference_dir, workdir)}\n\n{text}\n")
    return text, any(r["verdict"] == FLIPS for r in rows)
