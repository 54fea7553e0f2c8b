"""The study end to end on the smoke preset, the report from a hand-made workdir, the notebooks."""

import glob
import json
import math
import os

import pytest

from rnn_spectra import workdir as wd
from rnn_spectra.errors import WorkdirError
from rnn_spectra.study.findings import build_claims
from rnn_spectra.study.report import write_report
from rnn_spectra.study.sentences import findings
from rnn_spectra.study.results import build_results
from rnn_spectra.study.presets import PRESETS
from rnn_spectra.study.grid import expand
from rnn_spectra.study.run import run_study

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def smoke_study(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("study") / "smoke")
    run_study("smoke", workdir)
    return workdir


def test_smoke_study_end_to_end(smoke_study):
    preset = PRESETS["smoke"]
    results = json.load(open(os.path.join(smoke_study, "results.json")))
    # One row per variant x clipping mode and table, each at its chosen setting.
    rows = len(preset.tasks) * len(preset.variants) * len(preset.clips)
    assert len(results["rows"]) == rows
    assert results["members"] == len(expand(preset)) + rows * len(preset.confirm_seeds)
    for r in results["rows"]:
        # reported: the confirmation seeds, at the setting the pilot seeds chose
        assert r["seeds"] == len(preset.confirm_seeds) and r["confirmed"]
        assert sorted(map(int, r["test_losses"])) == sorted(preset.confirm_seeds)
        assert all(d.startswith("runs/confirm/") for d in r["member_dirs"])
        assert r["sigma_max_init"] is not None and r["lyapunov_top_init"] is not None
        assert math.isclose(r["baseline"], 1 / 6)
    # Orthogonal and identity inits start with sigma_max = 1 exactly (to float precision).
    ortho = [r for r in results["rows"] if "/orthogonal/" in r["variant"] or "/identity/" in r["variant"]]
    assert all(abs(r["sigma_max_init"] - 1.0) < 1e-4 for r in ortho)
    report = open(os.path.join(smoke_study, "report.md")).read()
    assert "## Findings" in report and "| variant |" in report
    for fig in glob.glob(os.path.join(smoke_study, "figures", "*.png")):
        assert os.path.relpath(fig, smoke_study) in report
    # per table: 6 (loss, test loss, sigma, jacobian, flow, time to target) + loss vs cost
    assert len(glob.glob(os.path.join(smoke_study, "figures", "*.png"))) == 7 * len(preset.tasks) + 1  # + predictors.png
    assert "## Loss against size and time" in report  # the smoke study times its rows
    claims = json.load(open(os.path.join(smoke_study, "claims.json")))["claims"]
    assert {c["id"] for c in claims} >= {f"adding_T8|{r['variant']}|baseline|test loss"
                                         for r in results["rows"]}
    # time to a target: the families' representatives pairwise, a family per target
    for f in preset.target_fractions:
        assert sum(c["family"] == f"adding_T8|steps to {f:g}× baseline" for c in claims) == 6
    # ... each seed counted, in steps and in seconds of one model timed alone (timing.json);
    # rows that share a program (tanh, ReLU, LSTM, GRU) share its measurement
    timing = json.load(open(os.path.join(smoke_study, "timing.json")))
    assert "cpu" in timing["machine"] and len(timing["programs"]) == 4
    for r in results["rows"]:
        program = timing["programs"][timing["rows"][f"adding_T8|{r['variant']}"]["program"]]
        assert r["seconds_per_step_alone"] == program["seconds_per_step"] > 0
        assert [t["fraction"] for t in r["time_to_target"]] == list(preset.target_fractions)
        for t in r["time_to_target"]:
            assert len(t["steps_by_seed"]) == t["seeds"] == len(preset.confirm_seeds)
            if t["median_steps"] is not None:
                assert t["median_seconds"] == pytest.approx(t["median_steps"] * program["seconds_per_step"])
    # Every member has spectra from init to the end, and the report's rows have checkpoints.
    for r in results["rows"]:
        first = os.path.join(smoke_study, r["member_dirs"][0])
        spectra = wd.read_jsonl(os.path.join(first, "spectra.jsonl"))
        assert spectra[0]["step"] == 0 and "lyapunov/mean" in spectra[0]
        assert sorted(os.listdir(os.path.join(first, "checkpoints")))[:1] == ["0"]


def test_rerunning_a_finished_study_skips_its_groups(smoke_study, capsys):
    before = os.path.getmtime(os.path.join(smoke_study, "runs"))
    timed = os.path.getmtime(os.path.join(smoke_study, "timing.json"))
    record = run_study("smoke", smoke_study, report=False)
    err = capsys.readouterr().err
    assert "(done, skipped)" in err and "timing one model" not in err  # measured once
    assert os.path.getmtime(os.path.join(smoke_study, "timing.json")) == timed
    assert record["groups_found_done"] == 8  # the pilot's 4 and the confirmation's 4
    assert os.path.getmtime(os.path.join(smoke_study, "runs")) == before
    with pytest.raises(WorkdirError, match="preset 'smoke'"):
        run_study("cpu", smoke_study)


@pytest.mark.parametrize("notebook", sorted(glob.glob(os.path.join(ROOT, "notebooks", "*.py"))),
                         ids=os.path.basename)
def test_notebook_executes(notebook, smoke_study, monkeypatch):
    jupytext = pytest.importorskip("jupytext")
    nbclient = pytest.importorskip("nbclient")
    results = json.load(open(os.path.join(smoke_study, "results.json")))
    member = os.path.join(smoke_study, results["rows"][0]["member_dirs"][0])
    monkeypatch.setenv("RNN_SPECTRA_WORKDIR", member)
    monkeypatch.setenv("RNN_SPECTRA_STUDY", smoke_study)
    # 04_fixed_points: an IRNN and a GRU member (the chosen members have checkpoints).
    for cell in ("irnn", "gru"):
        row = next(r for r in results["rows"] if r["variant"].startswith(f"{cell}/"))
        monkeypatch.setenv(f"RNN_SPECTRA_{cell.upper()}_WORKDIR",
                           os.path.join(smoke_study, row["member_dirs"][0]))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    book = jupytext.read(notebook)
    nbclient.NotebookClient(book, timeout=600, kernel_name="python3").execute()
    # The paired .ipynb is committed without outputs and holds the same code.
    paired = jupytext.read(notebook[:-3] + ".ipynb")
    assert [c.source for c in paired.cells] == [c.source for c in jupytext.read(notebook).cells]
    assert all(not c.get("outputs") for c in paired.cells if c.cell_type == "code")


# ----------------------------------------------------------------------------- hand-made workdir


def _member(workdir, rel, *, test_loss, status="completed", diverged_step=None, solved=False,
            eval_losses=(), sigma=(1.0, 1.0), lam=(-0.1, -0.05)):
    d = os.path.join(workdir, rel)
    os.makedirs(d)
    wd.write_json(os.path.join(d, "config.json"), {})  # a member is a run: it has a config
    wd.write_json(os.path.join(d, "summary.json"), {
        "status": status, "diverged_step": diverged_step, "baseline": 1 / 6, "num_params": 97,
        "final_eval": {"loss": test_loss}, "test": {"loss": test_loss, "max_sq_err": 0.01 if solved else 1.0},
        "solved": solved, "wall_time_s": 12.0, "sweep": {"members": 4},
    })
    wd.append_jsonl(os.path.join(d, "metrics.jsonl"), [
        {"step": 10 * (i + 1), "split": "eval", "loss": v, "max_sq_err": 0.01 if v < 0.01 else 1.0,
         "wall_time": 1.0 + i} for i, v in enumerate(eval_losses)])
    wd.append_jsonl(os.path.join(d, "spectra.jsonl"), [
        {"step": s, "sv/W_s": [sg, 0.5], "lyapunov/mean": [lm, -1.0], "lags": [1, 2, 4],
         "jac_log_norm/mean": [0.0, -0.5, -1.0], "grad_flow/t": [1, 2, 3],
         "grad_flow/log_norm": [-2.0, -1.0, 0.0]}
        for s, sg, lm in zip((0, 30), sigma, lam)])


def _fixture_study(w: str) -> None:
    members = []
    for row, setting, seed, kw in [
        ("good/clip=global_norm", "lr0.01_c1", 0, dict(test_loss=0.004, solved=True, eval_losses=(0.1, 0.005, 0.004))),
        ("good/clip=global_norm", "lr0.01_c1", 1, dict(test_loss=0.006, eval_losses=(0.1, 0.05, 0.006))),
        ("good/clip=global_norm", "lr0.001_c1", 0, dict(test_loss=0.15, eval_losses=(0.17, 0.16, 0.15))),
        ("good/clip=global_norm", "lr0.001_c1", 1, dict(test_loss=0.15, eval_losses=(0.17, 0.16, 0.15))),
        ("bad/clip=none", "lr0.01", 0, dict(test_loss=0.17, status="diverged", diverged_step=7,
                                            sigma=(2.5, 2.5), lam=(0.3, 0.3))),
        ("bad/clip=none", "lr0.01", 1, dict(test_loss=0.17, eval_losses=(0.18, 0.17, 0.17), sigma=(2.5, 2.4),
                                            lam=(0.3, 0.2))),
    ]:
        rel = f"runs/adding_T8/{row.replace('/', '__')}/{setting}_s{seed}"
        _member(w, rel, **kw)
        lr = float(setting.split("_")[0][2:])
        members.append({"relpath": rel, "table": "adding_T8", "row": row, "setting": setting,
                        "seed": seed, "learning_rate": lr, "clip": row.split("=")[1],
                        "clip_value": 1.0})
    wd.write_json(os.path.join(w, "study.json"), {"preset": "fixture", "members": members,
                                                  "preset_fields": {"target_fraction": 0.5}})


def test_report_from_a_fixture_workdir(tmp_path):
    w = str(tmp_path / "study")
    _fixture_study(w)
    results = build_results(w)
    good, bad = results["rows"]
    assert good["variant"] == "good/clip=global_norm" and good["setting"] == "lr0.01_c1"
    assert good["test_loss_mean"] == pytest.approx(0.005) and good["test_loss_sd"] == pytest.approx(0.001 * 2 ** 0.5)  # sample sd (ddof=1)
    assert (good["seeds_solved"], good["seeds_diverged"], good["steps_to_solve"]) == (1, 0, 20)
    t, = good["time_to_target"]  # a study.json from before two targets: its one target_fraction
    assert (t["fraction"], t["median_steps"], t["reached"]) == (0.5, 20, 2)  # below 0.5 x 1/6 at 20
    assert good["beats_baseline"] and not bad["beats_baseline"]
    assert bad["seeds_diverged"] == 1 and bad["diverged_steps"] == [7]
    assert bad["sigma_max_init"] == pytest.approx(2.5) and bad["lyapunov_top_init"] == pytest.approx(0.3)
    assert not good["confirmed"]  # no confirmation members: the report must say so (†)
    text = findings(results, build_claims(results))
    assert text[0].startswith("**Comparisons made: 4** in 3 families")  # + steps to 0.5x
    # 2 seeds: a 3x lower loss than the baseline is not decided; a diverged seed is counted
    assert text[1].startswith("**adding_T8** (baseline 0.1667, decided within the family "
                              "`adding_T8|vs baseline`): 0 of 2 rows have a test loss below the "
                              "baseline; 0 above it; 2 not distinguishable")
    assert any("bad/clip=none diverged in 1/2 seeds" in s and "σ_max(W_s) at init 2.5" in s for s in text)
    path = write_report(w)
    report = open(path).read()
    # the geometric mean (not a ratio: no "×") with its t-interval on 2 seeds
    assert "| good/clip=global_norm | lr0.01_c1 (edge) | 97 | 0.0049 [0.000373, 0.0644] † | 1/2 | 0/2 |" in report
    assert "† marks a row without confirmation seeds" in report


def test_a_full_disk_while_writing_figures_is_one_line_74_and_leaves_no_partial_file(
        tmp_path, monkeypatch, capsys):
    import errno

    from matplotlib.figure import Figure

    w = str(tmp_path / "study")
    _fixture_study(w)
    real = Figure.savefig

    def full_after_some_bytes(self, fname, *args, **kwargs):
        real(self, fname, *args, **kwargs)
        with open(fname, "r+b") as f:  # what a disk that fills mid-write leaves
            f.truncate(10)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), fname)

    monkeypatch.setattr(Figure, "savefig", full_after_some_bytes)
    monkeypatch.setattr("rnn_spectra.study.run.export_chosen_checkpoints", lambda w: None)
    assert cli.main(["report", "--workdir", w]) == 74
    err = [line for line in capsys.readouterr().err.strip().splitlines()
           if "the study has not finished" not in line]  # the fixture's own notice
    assert len(err) == 1 and "No space left on device" in err[0] and ".png" in err[0], err
    left = [f for _, _, fs in os.walk(w) for f in fs if f.endswith(".png") or ".tmp." in f]
    assert left == [] and not os.path.exists(os.path.join(w, "report.md"))


def test_report_on_a_directory_that_is_not_a_study(tmp_path):
    with pytest.raises(WorkdirError, match="not a study"):
        build_results(str(tmp_path))


def test_minus_infinity_is_shown_and_marked_never_dropped(tmp_path, monkeypatch):
    """A seed whose lambda_1 or lag norm is -inf (an exactly zero Jacobian) is named in the table
    and marked in the figures, not averaged away into "–" or a missing point (issue #14)."""
    from rnn_spectra.study import figures as figures_lib

    w, members = str(tmp_path / "study"), []
    for seed, lam0 in ((0, "-inf"), (1, "-inf")):
        rel = f"runs/digits_T64/irnn__clip=none/lr0.01_s{seed}"
        _member(w, rel, test_loss=0.1, eval_losses=(0.2, 0.1))
        os.remove(os.path.join(w, rel, "spectra.jsonl"))
        wd.append_jsonl(os.path.join(w, rel, "spectra.jsonl"), [
            {"step": s, "sv/W_s": [1.0, 0.5], "lyapunov/mean": [lam, -1.0], "lags": [1, 2, 4],
             "jac_log_norm/mean": [0.0, -0.5, jl], "grad_flow/t": [1, 2, 3],
             "grad_flow/log_norm": [-2.0, -1.0, 0.0], "step_norm/mean": 1.0, "dead_units/mean": 0.25,
             "lyapunov/near_zero/mean": 3.0, "lyapunov/kaplan_yorke/mean": 3.0, "lyapunov/discard": 16}
            for s, lam, jl in ((0, lam0, "-inf"), (30, -0.01 * (seed + 1), -1.0))])
        members.append({"relpath": rel, "table": "digits_T64", "row": "irnn/clip=none",
                        "setting": "lr0.01", "seed": seed, "learning_rate": 0.01, "clip": "none",
                        "clip_value": 1.0})
    wd.write_json(os.path.join(w, "study.json"), {"preset": "fixture", "members": members,
                                                  "preset_fields": {"target_fraction": 0.5}})
    marked = []
    real = figures_lib._mark_neginf
    monkeypatch.setattr(figures_lib, "_mark_neginf",
                        lambda ax, marks: (marked.extend(x.tolist() for x, _ in marks if len(x)),
                                           real(ax, marks)))
    text = open(write_report(w)).read()
    row = next(line for line in text.splitlines() if line.startswith("| irnn/clip=none | lr0.01"))
    assert "| −∞ → -0.015 |" in row
    spectra = next(line for line in text.splitlines() if line.startswith("| irnn/clip=none | 1 → 1"))
    assert spectra == "| irnn/clip=none | 1 → 1 | 1 → 1 | −∞ → -0.015 | 3 → 3 | 3 → 3 | 25% → 25% |"
    assert "burn-in of 16 steps" in text
    assert [0] in marked and [4] in marked  # lambda_1 at step 0; the lag-4 norm at init


# ----------------------------------------------------------------------------- members that changed
from rnn_spectra import cli  # noqa: E402
from rnn_spectra.study.presets import Preset, TaskEntry, base, variant  # noqa: E402

TINY = Preset(name="tiny_members", description="one program, two seeds: seconds (tests)",
              base=base(hidden_size=4, steps=6, batch_size=4, eval_every=3, eval_batches=1,
                        eval_batch_size=8, log_every=3, spectral_every=0),
              tasks=(TaskEntry("adding", 6),), variants=(variant("tanh_rnn", "orthogonal", 1.0),),
              clips=("none",), learning_rates=(1e-2,), clip_values=(1.0,), pilot_seeds=(0, 1),
              confirm_seeds=(), test_chunks=1)


@pytest.fixture
def tiny_preset(monkeypatch, tmp_path_factory):
    """The preset, and a persistent compilation cache: a re-run study compiles nothing again."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    monkeypatch.setitem(PRESETS, TINY.name, TINY)
    keys = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
    old = {k: getattr(jax.config, k) for k in keys}
    for k, v in zip(keys, (str(tmp_path_factory.mktemp("jax_cache")), 0.0)):
        jax.config.update(k, v)
    compilation_cache.reset_cache()
    yield TINY.name
    for k, v in old.items():
        jax.config.update(k, v)
    compilation_cache.reset_cache()


def _rows(member_dir):
    return [{k: v for k, v in r.items() if k != "wall_time"}
            for r in wd.read_jsonl(os.path.join(member_dir, wd.METRICS))]


def _one_error_line(capsys, command):
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith(f"rnn-spectra {command}: "), err
    return err[0]


def test_report_refuses_a_changed_or_missing_member_and_study_retrains_its_group(
        tiny_preset, tmp_path, capsys):
    import shutil

    w = str(tmp_path / "s")
    run_study(tiny_preset, w, report=False)
    recs = wd.read_json(os.path.join(w, "study.json"))["members"]
    assert [r["steps"] for r in recs] == [6, 6] and all(len(r["config_hash"]) == 16 for r in recs)
    build_results(w)
    m0, m1 = (os.path.join(w, r["relpath"]) for r in recs)
    before = {m: _rows(m) for m in (m0, m1)}

    # A member extended as a user would: the report refuses it, naming what differs and the fix.
    assert cli.main(["train", "--workdir", m0, "--config.train.steps=9"]) == 0
    capsys.readouterr()
    assert cli.main(["report", "--workdir", w]) == 2
    line = _one_error_line(capsys, "report")
    assert (f"study member {recs[0]['relpath']} was changed after the study trained it "
            "(train.steps 6 -> 9)") in line
    assert f"re-run `rnn-spectra study --preset {tiny_preset} --workdir {w}`" in line
    # A deleted member as well: a finished study must have every member.
    shutil.rmtree(m1)
    with pytest.raises(WorkdirError, match=r"\(and 1 other members\)"):
        build_results(w)

    # The same study command re-trains the group from step 0: both members as the study made
    # them, rows included (a resumed group would have given m1 a summary and no metrics).
    run_study(tiny_preset, w, report=False)
    assert "re-training the group's 2 members from step 0" in capsys.readouterr().err
    build_results(w)
    for m in (m0, m1):
        assert _rows(m) == before[m]
        summary = wd.read_json(os.path.join(m, wd.SUMMARY))
        assert summary["status"] == "completed" and summary["steps_completed"] == 6

    shutil.rmtree(m1)
    with pytest.raises(WorkdirError, match=f"study member {recs[1]['relpath']} is missing"):
        build_results(w)


def test_an_interrupted_study_exits_75(tiny_preset, tmp_path, monkeypatch, capsys):
    class InterruptedLoop:  # a group whose members all checkpointed and stopped at a signal
        def __init__(self, configs, workdirs, group_dir, **kwargs):
            self.n = len(configs)

        def run(self, progress=None):
            return [{"status": "interrupted"}] * self.n

    monkeypatch.setattr("rnn_spectra.study.run.Loop", InterruptedLoop)
    assert cli.main(["study", "--preset", tiny_preset, "--workdir", str(tmp_path / "s")]) == 75
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.splitlines()[-1] == ("rnn-spectra study: interrupted in group pilot/adding_T6/tanh_rnn_"
                                    "adam_global_norm (checkpointed); run the same command to resume")


def test_report_of_a_study_json_without_members_is_one_line(tmp_path, capsys):
    w = tmp_path / "s"
    w.mkdir()
    wd.write_json(str(w / "study.json"), {"preset": "smoke"})
    assert cli.main(["report", "--workdir", str(w)]) == 2
    assert "study.json is damaged (no list of members" in _one_error_line(capsys, "report")


def test_report_publish_to_a_file_is_one_line(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("# mine\n")
    assert cli.main(["report", "--workdir", str(tmp_path / "s"), "--publish", str(readme)]) == 2
    assert f"--publish {readme} is a file; give a folder" in _one_error_line(capsys, "report")
    assert readme.read_text() == "# mine\n"


def _fake(setting, val, status="completed"):
    return {"table": "t", "row": "r", "setting": setting, "summary": {"status": status,
            "final_eval": {"loss": val}}}


def test_settings_rank_fewer_diverged_seeds_first_then_validation_loss():
    """A setting where one of two seeds diverged loses to one where none did, even with a lower
    mean validation loss over its seeds (the old rank only demoted all-seeds-diverged)."""
    from rnn_spectra.study.results import choose_best

    members = [_fake("risky", 0.01), _fake("risky", 0.02, "diverged"),
               _fake("safe", 0.05), _fake("safe", 0.06)]
    assert {m["setting"] for m in choose_best(members)[("t", "r")]} == {"safe"}


def test_family_representative_is_chosen_on_validation_not_test():
    """Two ReLU rows: the one with the lower pilot validation loss represents the family even when
    the other has the lower test loss (choosing on test would be selection on the test set)."""
    rows = [dict(table="t", variant=v, setting="s", pilot_val_loss_mean=va, baseline=1.0,
                 seeds=2, test_losses={"0": te, "1": te + 0.01}, optimizer="adam", clip="none")
            for v, te, va in (("relu_rnn/a/clip=none", 0.1, 0.3), ("irnn/b/clip=none", 0.2, 0.25),
                              ("lstm/c/clip=none", 0.5, 0.1))]
    fam = next(c for c in build_claims({"rows": rows}) if c["id"] == "t|family LSTM|family ReLU|test loss")
    # a log ratio of the paired seeds: LSTM (0.5, 0.51) over the chosen ReLU (0.2, 0.21)
    ratio = (math.log(0.5 / 0.2) + math.log(0.51 / 0.21)) / 2
    assert "best ReLU (irnn/b/clip=none)" in fam["text"] and fam["difference"]["estimate"] == pytest.approx(ratio)


def test_a_loss_curve_takes_a_non_finite_eval_recorded_as_a_string():
    """JSON keeps a seed's non-finite eval loss as "nan" or "inf": the mean curve and the band
    leave it out at that step instead of failing on a string."""
    from rnn_spectra.study.figures import _band, _mean_curve

    series = [{10: 0.5, 20: "inf"}, {10: 0.3, 20: 0.2}, {10: "nan", 20: 0.4}]
    x, y = _mean_curve(series)
    assert list(x) == [10, 20] and list(y) == pytest.approx([0.4, 0.3])
    bx, lo, hi = _band(series)
    assert list(bx) == [10, 20] and list(lo) == [0.3, 0.2] and list(hi) == [0.5, 0.4]
