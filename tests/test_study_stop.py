"""A stop is a stop: a SIGTERM at a group's last step, or while the chosen members' checkpoints
are copied, ends the study with exit 75, and the same command resumes it to the numbers of an
uninterrupted study. A checkpoint copy that did not finish is redone, and ``load_run`` refuses a
checkpoint older than the steps its run completed."""

import os
import shutil
import signal

import pytest
from test_study_workers import TWO, _content

from rnn_spectra import cli
from rnn_spectra import workdir as wd
from rnn_spectra.errors import WorkdirError
from rnn_spectra.progress import StudyBar
from rnn_spectra.runs import load_run
from rnn_spectra.study import run as study_run
from rnn_spectra.study.presets import PRESETS


@pytest.fixture
def two(monkeypatch):
    monkeypatch.setitem(PRESETS, TWO.name, TWO)
    return TWO.name


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted study."""
    w = str(tmp_path_factory.mktemp("ref") / "s")
    PRESETS[TWO.name] = TWO
    try:
        assert cli.main(["study", "--preset", TWO.name, "--workdir", w, "--workers", "1"]) == 0
    finally:
        PRESETS.pop(TWO.name)
    return w


def _chosen(w: str) -> list[str]:
    from rnn_spectra.study.results import build_results

    return [os.path.join(w, r["member_dirs"][0]) for r in build_results(w)["rows"]]


@pytest.mark.slow
def test_a_sigterm_at_a_groups_last_step_stops_the_study(two, reference, tmp_path, monkeypatch, capsys):
    w = str(tmp_path / "s")
    real = StudyBar.__call__
    sent = []

    def at_the_last_step(self, name, step, steps, info):
        real(self, name, step, steps, info)
        if step == steps and not sent:  # the loop is finishing: too late to stop this group
            sent.append(name)
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(StudyBar, "__call__", at_the_last_step)
    assert cli.main(["study", "--preset", two, "--workdir", w, "--workers", "1"]) == 75
    err = capsys.readouterr().err
    assert "SIGTERM" in err and err.count("members in one program") == 1  # no second group
    assert not os.path.exists(os.path.join(w, "report.md"))
    monkeypatch.setattr(StudyBar, "__call__", real)
    assert cli.main(["study", "--preset", two, "--workdir", w, "--workers", "1"]) == 0
    assert "(done, skipped)" in capsys.readouterr().err  # the finished group was kept
    a, b = _content(reference), _content(w)
    assert sorted(a) == sorted(b)
    assert all(a[k] == b[k] for k in a), [k for k in a if a[k] != b[k]]


@pytest.mark.slow
def test_a_sigterm_while_copying_checkpoints_is_75_and_the_copy_is_redone(
        two, tmp_path, monkeypatch, capsys):
    w = str(tmp_path / "s")
    real = study_run.export_chosen_checkpoints.__globals__["export_member_checkpoints"]

    def then_sigterm(*args, **kwargs):
        real(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setitem(study_run.export_chosen_checkpoints.__globals__,
                        "export_member_checkpoints", then_sigterm)
    assert cli.main(["study", "--preset", two, "--workdir", w, "--workers", "1"]) == 75
    err = capsys.readouterr().err.strip().splitlines()
    assert "copying the chosen members' checkpoints" in err[-1] and "Traceback" not in "".join(err)
    monkeypatch.setitem(study_run.export_chosen_checkpoints.__globals__,
                        "export_member_checkpoints", real)
    assert cli.main(["study", "--preset", two, "--workdir", w, "--workers", "1"]) == 0
    for member in _chosen(w):
        run = load_run(member)
        assert run.steps and run.steps[-1] == run.summary["steps_completed"]
        run.state()  # the newest is the end


@pytest.mark.slow  # a smoke study, then its export redone: ~20 s idle, ~45 s loaded
def test_an_unfinished_copy_is_refused_by_load_run_and_redone_by_report(
        two, tmp_path, capsys):
    w = str(tmp_path / "s")
    assert cli.main(["study", "--preset", two, "--workdir", w, "--workers", "1"]) == 0
    member = _chosen(w)[0]
    steps = load_run(member).steps
    assert len(steps) >= 2
    for s in steps[1:]:  # what a copy killed after its first step leaves
        shutil.rmtree(os.path.join(member, wd.CHECKPOINTS, str(s)))
    with pytest.raises(WorkdirError, match=f"newest checkpoint is step {steps[0]} but it completed"):
        load_run(member).state()
    load_run(member).state(step=steps[0])  # asked for by name: fine
    assert cli.main(["report", "--workdir", w]) == 0
    assert load_run(member).steps == steps
