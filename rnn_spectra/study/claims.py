"""A study's findings as checkable records (``claims.json``), and the check of a published set
of claims against another run of the study (other seeds, another machine).

A claim compares two quantities (A - B, with its bootstrap CI over seeds): its ``sign`` is -1
(A lower), +1 (A higher) or 0 (the CI straddles zero: "not distinguishable at this budget",
which claims nothing). Against a new study a decided claim HOLDS when the new CI has the same
sign, FLIPS when the new CI excludes zero on the other side, and is UNDECIDED otherwise.
"""

from __future__ import annotations

import os

from rnn_spectra import workdir as wd
from rnn_spectra.errors import WorkdirError
from rnn_spectra.study.stats import Interval

CLAIMS = "claims.json"
HOLDS, FLIPS, UNDECIDED = "HOLDS", "FLIPS", "UNDECIDED"


def claim(cid: str, text: str, quantity: str, a: str, b: str, ci: Interval) -> dict:
    """One record: ``a`` vs ``b`` on ``quantity`` (A - B = ``ci``)."""
    sign = 0 if not ci.excludes_zero() else (-1 if ci.hi < 0 else 1)
    return {"id": cid, "text": text, "quantity": quantity, "a": a, "b": b,
            "difference": ci.as_dict(), "sign": sign}


def write_claims(workdir: str, claims: list[dict], about: dict | None = None) -> str:
    path = wd.path(workdir, CLAIMS)
    wd.write_json(path, {**(about or {}), "claims": claims})
    return path


def read_claims(directory: str) -> list[dict]:
    path = os.path.join(directory, CLAIMS)
    if not os.path.isfile(path):
        raise WorkdirError(f"{path} does not exist; claims come from `rnn-spectra report` "
                           "(a published study keeps them in docs/)")
    data = wd.read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("claims"), list):
        raise WorkdirError(f"{path} is not a claims file (no 'claims' list)")
    return data["claims"]


def check(reference: list[dict], new: list[dict]) -> list[dict]:
    """Per decided reference claim: its verdict on ``new`` (HOLDS / FLIPS / UNDECIDED)."""
    by_id = {c["id"]: c for c in new}
    out = []
    for ref in reference:
        if not ref.get("sign"):
            continue  # "not distinguishable" claims nothing to hold or flip
        got = by_id.get(ref["id"])
        if got is None or not got.get("sign"):
            result = UNDECIDED
        else:
            result = HOLDS if got["sign"] == ref["sign"] else FLIPS
        out.append({"id": ref["id"], "text": ref["text"], "verdict": result,
                    "reference": ref["difference"], "new": got["difference"] if got else None})
    return out


def render_check(rows: list[dict]) -> str:
    lines = ["| claim | verdict | reference A−B [95% CI] | new A−B [95% CI] |", "|---|---|---|---|"]
    for r in rows:
        ref, new = Interval(**r["reference"]), Interval(**r["new"]) if r["new"] else None
        lines.append(f"| {r['text']} | {r['verdict']} | {ref.text()} | {new.text() if new else 'missing'} |")
    counts = {v: sum(r["verdict"] == v for r in rows) for v in (HOLDS, FLIPS, UNDECIDED)}
    lines.append("")
    lines.append(f"{counts[HOLDS]} hold, {counts[FLIPS]} flip, {counts[UNDECIDED]} undecided "
                 f"of {len(rows)} decided claims.")
    return "\n".join(lines)


def check_study(reference_dir: str, reference: list[dict], workdir: str) -> tuple[str, bool]:
    """``reference`` (the claims of ``reference_dir``) checked against the study in ``workdir``:
    the table, also written to WORKDIR/claims_check.md, and whether any claim flips."""
    rows = check(reference, read_claims(workdir))
    text = render_check(rows)
    wd.write_text(wd.path(workdir, "claims_check.md"),
                  f"Claims of {reference_dir} checked against {workdir}\n\n{text}\n")
    return text, any(r["verdict"] == FLIPS for r in rows)
