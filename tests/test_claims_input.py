"""`report --check-claims` on bad input: a malformed claims file, a check between different
presets or designs, or an unfinished study gives one line and exit 2 (never exit 1, which
means "a claim flipped", and never a verdict computed from the wrong things)."""

import json
import os

import pytest

from rnn_spectra import cli
from rnn_spectra import workdir as wd
from rnn_spectra.study.claims import claim
from rnn_spectra.study.stats import Interval

FINISHED = {"preset": "p", "finished": "2026-01-01T00:00:00"}
GOOD = claim("t|0", "claim 0", "test loss", "A", "B", Interval(-0.2, -0.3, -0.1, 5))


@pytest.fixture
def no_report(monkeypatch):
    monkeypatch.setattr("rnn_spectra.study.run.export_chosen_checkpoints", lambda w: None)
    monkeypatch.setattr("rnn_spectra.study.report.write_report",
                        lambda w: os.path.join(w, "report.md"))


def _dir(tmp_path, name, claims, about=FINISHED, study=FINISHED):
    d = tmp_path / name
    d.mkdir()
    (d / "claims.json").write_text(json.dumps({**about, "claims": claims}))
    if study is not None:
        wd.write_json(str(d / "study.json"), study)
    return str(d)


def _one_line(capsys, code, *words):
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, (code, err)
    for w in words:
        assert w in err[0], err[0]
    return err[0]


def test_a_good_pair_checks(tmp_path, capsys, no_report):
    ref, new = _dir(tmp_path, "ref", [GOOD]), _dir(tmp_path, "new", [GOOD])
    assert cli.main(["report", "--workdir", new, "--check-claims", ref]) == 0
    assert "1 hold, 0 flip, 0 undecided" in capsys.readouterr().out


@pytest.mark.parametrize("record,words", [
    (3, ["record 0", "is a int"]),
    ({k: v for k, v in GOOD.items() if k != "id"}, ["record 0", "no string 'id'"]),
    ({k: v for k, v in GOOD.items() if k != "difference"}, ["'t|0'", "no 'difference'"]),
    ({**GOOD, "difference": "-0.2 [-0.3, -0.1]"}, ["'t|0'", "no 'difference' object"]),
    ({**GOOD, "difference": {"estimate": "low", "lo": 0, "hi": 1, "n": 5}}, ["'t|0'", "not numbers"]),
    ({**GOOD, "sign": "yes"}, ["'t|0'", "sign 'yes'"]),
    ({**GOOD, "sign": True}, ["'t|0'", "sign True"]),
    ({k: v for k, v in GOOD.items() if k != "sign"}, ["'t|0'", "no 'sign'"]),
])
def test_a_malformed_record_is_named_in_one_line(tmp_path, capsys, no_report, record, words):
    ref = _dir(tmp_path, "ref", [record, GOOD])
    new = _dir(tmp_path, "new", [GOOD])
    code = cli.main(["report", "--workdir", new, "--check-claims", ref])
    _one_line(capsys, code, "claims.json", *words)
    # the same record in the new study's own claims file is caught too
    bad_new = _dir(tmp_path, "bad_new", [record, GOOD])
    code = cli.main(["report", "--workdir", bad_new, "--check-claims", _dir(tmp_path, "r2", [GOOD])])
    _one_line(capsys, code, "claims.json", *words)


def test_an_empty_reference_is_refused_not_skipped(tmp_path, capsys, no_report):
    new = _dir(tmp_path, "new", [GOOD])
    _one_line(capsys, cli.main(["report", "--workdir", new, "--check-claims", ""]), "--check-claims")


def test_claims_of_another_preset_or_design_are_refused(tmp_path, capsys, no_report):
    ref = _dir(tmp_path, "ref", [GOOD], about={**FINISHED, "preset": "cpu"})
    new = _dir(tmp_path, "new", [GOOD], study={**FINISHED, "preset": "smoke"})
    _one_line(capsys, cli.main(["report", "--workdir", new, "--check-claims", ref]),
              "preset 'cpu'", "'smoke'")
    fields = {"learning_rates": [0.001, 0.01]}
    other = {"learning_rates": [0.001, 0.1]}
    from rnn_spectra.study.claims import design_hash
    ref = _dir(tmp_path, "ref2", [GOOD], about={**FINISHED, "design": design_hash({"preset_fields": fields})})
    new = _dir(tmp_path, "new2", [GOOD], study={**FINISHED, "preset_fields": other})
    _one_line(capsys, cli.main(["report", "--workdir", new, "--check-claims", ref]), "another design")
    same = _dir(tmp_path, "new3", [GOOD], study={**FINISHED, "preset_fields": fields})
    assert cli.main(["report", "--workdir", same, "--check-claims", ref]) == 0


def test_unfinished_studies_are_refused_on_either_side(tmp_path, capsys, no_report):
    unfinished = {"preset": "p", "finished": None}
    ref = _dir(tmp_path, "ref", [GOOD], about=unfinished)
    new = _dir(tmp_path, "new", [GOOD])
    _one_line(capsys, cli.main(["report", "--workdir", new, "--check-claims", ref]), "had not finished")
    ref = _dir(tmp_path, "ref2", [GOOD])
    new = _dir(tmp_path, "new2", [GOOD], study={"preset": "p"})
    _one_line(capsys, cli.main(["report", "--workdir", new, "--check-claims", ref]),
              "has not finished", "re-run its `study` command")
