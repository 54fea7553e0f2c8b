"""The README's answers say no more than the published claims: every claim id a bullet cites is
a record of that study's claims.json, every decided one HOLDS in each re-run of its
replication.md (or its bullet says it is "not established"), every
number with an interval is a cited claim's interval as the report prints it, and an undecided
claim is only ever cited as "not distinguishable at this budget"."""

import json
import os
import re

import pytest

from rnn_spectra.study.stats import UNDECIDED, Interval

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCK = re.compile(r"<!-- answer: (\S+) -->\n(.*?)<!-- /answer -->", re.S)
ID = re.compile(r"`([^`]+\|[^`]+)`")
# "×0.022 [0.0033, 0.147]" or "−0.0611 [−0.0924, −0.0298]" or "1 [0.185, 1]"
NUMBER = r"[−-]?(?:\d[\d.e+-]*|∞)"
QUOTED = re.compile(rf"(×?{NUMBER} \[{NUMBER}, {NUMBER}\])")
# UNDECIDED, or with what it is not distinguishable from in between
SAYS_UNDECIDED = re.compile(UNDECIDED.replace(" at this budget", r"(?: [^.;(]{0,40})? at this budget"))
ROW = re.compile(r"^\| .* \| `([^`]+)` \| (HOLDS|FLIPS|UNDECIDED) \|", re.M)


def _blocks() -> list[tuple[str, str]]:
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        found = BLOCK.findall(f.read())
    assert found, "README.md has no <!-- answer: DIR --> blocks"
    return found


def _bullets(block: str) -> list[str]:
    """One text per bullet (a line starting '- ' or 'N. '), its continuation lines joined."""
    items = re.split(r"\n(?=- |\d+\. )", block.strip())
    return [re.sub(r"\s*\n\s*", " ", b) for b in items]


def _claims(folder: str) -> dict:
    with open(os.path.join(ROOT, folder, "claims.json"), encoding="utf-8") as f:
        return {c["id"]: c for c in json.load(f)["claims"]}


def _checks(folder: str) -> list[dict]:
    """The verdict per id in each re-run (one ``## `workdir` `` section each) of
    folder/replication.md."""
    with open(os.path.join(ROOT, folder, "replication.md"), encoding="utf-8") as f:
        sections = re.split(r"\n## ", f.read())[1:]
    return [dict(ROW.findall(s)) for s in sections]


def _verdicts(folder: str) -> dict:
    """The first (the + 1000) re-run's verdicts."""
    return _checks(folder)[0]


def _minus(s: str) -> str:
    return s.replace("−", "-")


@pytest.mark.parametrize("folder,block", _blocks(), ids=lambda x: x if len(x) < 20 else "")
def test_every_answer_rests_on_claims_that_held(folder, block):
    claims, checks = _claims(folder), _checks(folder)
    assert checks and all(checks), f"{folder}/replication.md has no check table"
    for bullet in _bullets(block):
        cited = ID.findall(bullet)
        assert cited, f"a bullet of the {folder} answer cites no claim: {bullet[:80]}"
        for cid in cited:
            assert cid in claims, f"README cites {cid!r}, which is not in {folder}/claims.json"
            c = claims[cid]
            if c["sign"]:  # held in every re-run, or the bullet says it is not established
                held = all(check.get(cid) == "HOLDS" for check in checks)
                assert held or "not established" in bullet, (cid, [c.get(cid) for c in checks])
            else:
                assert SAYS_UNDECIDED.search(bullet), f"{cid} is undecided but its bullet does not say so"
        printed = {_minus(Interval.from_dict(claims[cid]["difference"]).text()) for cid in cited}
        for quoted in QUOTED.findall(bullet):
            assert _minus(quoted) in printed, (
                f"README quotes {quoted!r}, which is not the interval of any claim its bullet "
                f"cites ({sorted(printed)})")


NUMBER_TOKEN = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?:e-?\d+)?")


def test_every_number_in_the_answers_is_one_the_docs_print():
    """Counts, rates, learning rates, σ_max...: each number of an answer (outside the claim ids)
    is printed in that study's results.md, claims.json or replication.md, as written there."""
    for folder, block in _blocks():
        corpus = "".join(open(os.path.join(ROOT, folder, f), encoding="utf-8").read()
                         for f in ("results.md", "claims.json", "replication.md"))
        corpus = _minus(corpus)
        text = _minus(re.sub(r"`[^`]*`", "", block))
        missing = sorted({n for n in NUMBER_TOKEN.findall(text) if n not in corpus})
        assert not missing, f"README's {folder} answer quotes {missing}, which its docs do not print"


def _counts(folder: str) -> tuple[int, int, int]:
    claims = _claims(folder).values()
    return len(claims), len({c["family"] for c in claims}), sum(bool(c["sign"]) for c in claims)


def test_the_readme_counts_are_those_of_the_published_claims():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = re.sub(r"\s+", " ", f.read())
    main = _blocks()[0][0]  # the study the README's first answer rests on
    m, families, decided = _counts(main)
    assert f"made {m} comparisons in {families} families" in text
    assert f"{decided} were decided" in text
    held = list(_verdicts(main).values()).count("HOLDS")
    assert f"{held} of the {decided} held" in text
    m, _, decided = _counts("docs/control")
    assert f"Of its {m} comparisons" in text and f"Benjamini–Hochberg decided {decided};" in text
    held = list(_verdicts("docs/control").values()).count("HOLDS")
    assert f"{held} held" in text
