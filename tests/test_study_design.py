"""The study's design: choose on pilot seeds, extend the grid once at its edge, report fresh
confirmation seeds; seed offsets; claims checked against another run; matched sizes; the gpu
preset at toy size."""

import dataclasses
import math
import os

import pytest

from rnn_spectra import cli
from rnn_spectra import workdir as wd
from rnn_spectra.errors import ConfigError
from rnn_spectra.study.grid import beyond_edge, expand, matched_hidden_size, member_config
from rnn_spectra.study.presets import PRESETS, Preset, TaskEntry, base, variant
from rnn_spectra.study.results import build_results
from rnn_spectra.study.run import run_study

DESIGN = Preset(name="tiny_design", description="one program, pilot + extension + confirmation",
                base=base(hidden_size=4, steps=6, batch_size=4, eval_every=3, eval_batches=1,
                          eval_batch_size=8, log_every=3, spectral_every=0),
                tasks=(TaskEntry("adding", 6),), variants=(variant("tanh_rnn", "orthogonal", 1.0),),
                clips=("none",), learning_rates=(1e-3, 1e-2), clip_values=(1.0,),
                pilot_seeds=(0, 1), confirm_seeds=(5, 6, 7), test_chunks=1)


@pytest.fixture
def design(monkeypatch):
    monkeypatch.setitem(PRESETS, DESIGN.name, DESIGN)
    return DESIGN.name


def test_pilot_chooses_the_grid_extends_once_and_fresh_seeds_are_reported(design, tmp_path):
    w = str(tmp_path / "s")
    run_study(design, w)
    recs = wd.read_json(os.path.join(w, "study.json"))["members"]
    by_phase = {p: [r for r in recs if r["phase"] == p] for p in ("pilot", "extend", "confirm")}
    assert len(by_phase["pilot"]) == 4  # 2 learning rates x 2 pilot seeds
    # Both grid points are edges: the best one is extended by one grid step (x or / 10), once.
    assert len(by_phase["extend"]) == 2 and {r["learning_rate"] for r in by_phase["extend"]} <= {1e-4, 0.1}
    vals = {}
    for r in by_phase["pilot"] + by_phase["extend"]:
        s = wd.read_json(os.path.join(w, r["relpath"], wd.SUMMARY))
        vals.setdefault(r["setting"], []).append(s["final_eval"]["loss"])
    chosen = min(vals, key=lambda k: sum(vals[k]) / len(vals[k]))
    assert {r["setting"] for r in by_phase["confirm"]} == {chosen}
    assert sorted(r["seed"] for r in by_phase["confirm"]) == [5, 6, 7]
    row, = build_results(w)["rows"]
    assert row["setting"] == chosen and row["confirmed"] and row["extended"]
    assert sorted(row["test_losses"]) == ["5", "6", "7"]  # no pilot seed is reported
    tests = [wd.read_json(os.path.join(w, r["relpath"], wd.SUMMARY))["test"]["loss"]
             for r in sorted(by_phase["confirm"], key=lambda r: r["seed"])]
    assert [row["test_losses"][k] for k in ("5", "6", "7")] == tests
    # geometric mean with its interval on the log scale
    geo = math.exp(sum(math.log(v) for v in tests) / 3)
    assert row["test_loss_ci"]["scale"] == "log"
    assert math.exp(row["test_loss_ci"]["lo"]) <= geo <= math.exp(row["test_loss_ci"]["hi"])
    # "beats the baseline" is paired with each seed's own test set: adding's baseline predictor
    # (always 1) has that set's variance of the target as its loss, not exactly 1/6
    assert sorted(row["test_baselines"]) == ["5", "6", "7"]
    assert all(0.05 < b < 0.4 for b in row["test_baselines"].values())
    vs_base = wd.read_json(os.path.join(w, "claims.json"))["claims"][0]
    assert vs_base["b"] == "baseline" and vs_base["difference"]["estimate"] == pytest.approx(
        sum(math.log(row["test_losses"][s] / row["test_baselines"][s]) for s in ("5", "6", "7")) / 3)


def test_seed_offset_runs_disjoint_seeds_and_a_workdir_keeps_its_offset(design, tmp_path, capsys):
    w = str(tmp_path / "s")
    assert cli.main(["study", "--preset", design, "--workdir", w, "--no-report",
                     "--config.study.seed_offset=1000"]) == 0
    seeds = {r["seed"] for r in wd.read_json(os.path.join(w, "study.json"))["members"]}
    assert seeds == {1000, 1001, 1005, 1006, 1007}
    capsys.readouterr()
    assert cli.main(["study", "--preset", design, "--workdir", w, "--seed-offset", "7"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds a study with seed offset 1000, not 7" in err[0]
    assert cli.main(["study", "--preset", design, "--workdir", str(tmp_path / "t"),
                     "--seed-offset", "-1"]) == 2
    assert "--seed-offset must be a non-negative integer" in capsys.readouterr().err


def test_a_workdir_that_cannot_be_a_directory_is_one_line(design, tmp_path, capsys):
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "nowhere")  # a link made before its target, as with runs/ links
    assert cli.main(["study", "--preset", design, "--workdir", str(link), "--no-report"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "which does not exist; create that directory" in err[0], err
    (tmp_path / "file").write_text("x")
    assert cli.main(["study", "--preset", design, "--workdir", str(tmp_path / "file"), "--no-report"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot create the study directory" in err[0], err


def test_check_claims_exits_1_when_a_claim_flips(tmp_path, monkeypatch, capsys):
    from rnn_spectra.study.claims import claim
    from rnn_spectra.study.stats import Interval

    monkeypatch.setattr("rnn_spectra.study.run.export_chosen_checkpoints", lambda w: None)
    monkeypatch.setattr("rnn_spectra.study.report.write_report", lambda w: os.path.join(w, "report.md"))
    lower, higher, unsure = Interval(-0.2, -0.3, -0.1, 5), Interval(0.2, 0.1, 0.3, 5), Interval(0.0, -0.1, 0.1, 5)

    def claims_dir(name, *cis):
        d = tmp_path / name
        d.mkdir()
        finished = {"preset": "p", "finished": "2026-01-01T00:00:00"}  # a check needs both finished
        wd.write_json(str(d / "claims.json"), {**finished, "claims": [
            claim(f"t|{i}", f"claim {i}", "test loss", "A", "B", ci) for i, ci in enumerate(cis)]})
        wd.write_json(str(d / "study.json"), finished)
        return str(d)

    ref = claims_dir("ref", lower, higher, unsure)
    w = claims_dir("new", lower, unsure, higher)  # holds, undecided; the undecided ref claims nothing
    assert cli.main(["report", "--workdir", w, "--check-claims", ref]) == 0
    out = capsys.readouterr().out
    assert "| claim 0 | `t|0` | HOLDS |" in out and "| claim 1 | `t|1` | UNDECIDED |" in out and "claim 2" not in out
    assert "1 hold, 0 flip, 1 undecided of 2 decided claims" in out
    flipped = claims_dir("flipped", higher, higher)
    assert cli.main(["report", "--workdir", flipped, "--check-claims", ref]) == 1
    assert "| claim 0 | `t|0` | FLIPS |" in capsys.readouterr().out
    assert "FLIPS" in open(os.path.join(flipped, "claims_check.md")).read()
    assert cli.main(["report", "--workdir", w, "--check-claims", str(tmp_path / "none")]) == 2
    assert "claims.json does not exist" in capsys.readouterr().err


def test_matched_parameter_count_is_within_five_percent():
    from rnn_spectra.config import apply_overrides, default_config
    from rnn_spectra.study.grid import _count

    c = default_config()
    apply_overrides(c, {"task.name": "adding", "task.seq_len": 10, "model.hidden_size": 32})
    for cell in ("relu_rnn", "tanh_rnn", "gru"):
        apply_overrides(c, {"model.cell": cell})
        h = matched_hidden_size(c, "lstm")
        assert abs(_count(c, hidden_size=h) / _count(c, reference_cell="lstm") - 1) <= 0.05
    apply_overrides(c, {"model.cell": "relu_rnn"})
    assert matched_hidden_size(c, "lstm") == 65  # 4,486 free parameters vs the LSTM's 4,513
    apply_overrides(c, {"model.hidden_size": 1})
    with pytest.raises(ConfigError, match="within 5%"):
        matched_hidden_size(c, "lstm")


def test_learning_rate_grid_extends_past_its_edge_only():
    cpu = PRESETS["cpu-grid"]
    members = expand(cpu)
    lrs = sorted({m.learning_rate for m in members if m.variant.name == "lstm/orthogonal"})
    assert len(lrs) >= 5 and lrs[-1] / lrs[0] >= 100  # >= 5 points over >= 2 decades
    m = next(m for m in members if m.variant.name == "lstm/orthogonal")
    assert beyond_edge(cpu, dataclasses.replace(m, learning_rate=lrs[0])) == pytest.approx(lrs[0] / 10 ** 0.5, rel=1e-2)
    assert beyond_edge(cpu, dataclasses.replace(m, learning_rate=lrs[-1])) == pytest.approx(lrs[-1] * 10 ** 0.5, rel=1e-2)
    assert beyond_edge(cpu, dataclasses.replace(m, learning_rate=lrs[2])) is None
    matched = next(m for m in members if m.variant.match_params_of)
    assert member_config(cpu, matched).model.hidden_size == 65


@pytest.mark.slow  # ~2 min: 8 programs x 2 phases to compile
def test_gpu_preset_runs_at_toy_size(monkeypatch, tmp_path):
    """The gpu preset's variants, arms and design, shrunk to seconds: one table (adding T=100,
    where the SGD arm and the matched sizes live), H=8, 4 steps, one search point, one pilot seed."""
    gpu = PRESETS["gpu"]
    toy = dataclasses.replace(
        gpu, name="gpu_toy", base=base(hidden_size=8, steps=4, batch_size=4, eval_every=2,
                                       eval_batches=1, eval_batch_size=8, log_every=2,
                                       spectral_every=4),
        tasks=(TaskEntry("adding", 100),), pilot_seeds=(0,), confirm_seeds=(1, 2), test_chunks=1,
        search=dataclasses.replace(gpu.search, trials=1), extend_grid=False,
        variants=tuple(dataclasses.replace(v, search=v.search and dataclasses.replace(v.search, trials=1))
                       for v in gpu.variants))
    monkeypatch.setitem(PRESETS, toy.name, toy)
    w = str(tmp_path / "g")
    run_study(toy.name, w)
    rows = build_results(w)["rows"]
    from rnn_spectra.study.grid import clip_chosen

    assert {r["variant"] for r in rows} == {v.name if clip_chosen(gpu, v) else f"{v.name}/clip={c}"
                                            for v in gpu.variants if v.on(toy.tasks[0])
                                            for c in (v.clips or gpu.clips)}
    assert any(r["optimizer"] == "sgd" for r in rows) and any(r["hidden_size"] != 8 for r in rows)


def _row(variant, losses, *, optimizer="adam", clip="none", events=None, **kw):
    seeds = [str(s) for s in range(len(losses))]
    return dict(table="t", variant=f"{variant}/clip={clip}", setting="s", clip=clip, baseline=1.0,
                seeds=len(losses), optimizer=optimizer, pilot_val_loss_mean=sum(losses) / len(losses),
                test_losses=dict(zip(seeds, losses)),
                instability_events=dict(zip(seeds, events or [0] * len(losses))), **kw)


def test_claims_compare_within_arms_and_each_arm_with_the_main_one():
    from rnn_spectra.study.findings import build_claims
    from rnn_spectra.study.sentences import sentence
    from rnn_spectra.study.stats import UNDECIDED

    rows = [_row("relu_rnn/normal", [0.5, 0.6, 0.55, 0.5, 0.52]),
            _row("lstm/orthogonal", [0.1, 0.12, 0.11, 0.1, 0.13]),
            _row("relu_rnn/normal/sgd", [0.9, 1.2, 0.8, 1.1, 1.0], optimizer="sgd", events=[3, 5, 2, 4, 6]),
            _row("relu_rnn/normal/sgd", [0.7, 0.8, 0.6, 0.7, 0.75], optimizer="sgd", clip="global_norm",
                 events=[0, 0, 1, 0, 0]),
            _row("relu_rnn/normal/params=lstm", [0.5, 0.61, 0.54, 0.52, 0.5], match_params_of="lstm"),
            _row("tanh_rnn/orthogonal/lyapunov", [0.9, 0.95, 1.0, 0.97, 0.93], lyapunov_target=0.0,
                 lyapunov_top_end_by_seed={"0": 0.01, "1": -0.02, "2": 0.0, "3": 0.03, "4": -0.01}),
            _row("relu_rnn/orthogonal/lyapunov", [0.9, 0.95, 1.0, 0.97, 0.93], lyapunov_target=0.0,
                 lyapunov_top_end_by_seed={"0": -0.1, "1": -0.12, "2": -0.09, "3": -0.1, "4": -0.11})]
    claims = {c["id"]: c for c in build_claims({"rows": rows})}
    sgd, clipped = "relu_rnn/normal/sgd/clip=none", "relu_rnn/normal/sgd/clip=global_norm"
    assert claims[f"t|{clipped}|{sgd}|instability events per run"]["sign"] == -1  # clipping calms SGD
    assert claims[f"t|{clipped}|{sgd}|test loss"]["sign"] == -1
    assert claims[f"t|{sgd}|relu_rnn/normal/clip=none|test loss"]["sign"] == 1  # SGD vs Adam
    assert claims["t|family LSTM|family ReLU|test loss"]["sign"] == -1
    matched = "relu_rnn/normal/params=lstm/clip=none"
    assert claims[f"t|{matched}|lstm/orthogonal/clip=none|test loss"]["sign"] == 1
    assert claims[f"t|{matched}|relu_rnn/normal/clip=none|test loss"]["sign"] == 0
    assert UNDECIDED in sentence(claims[f"t|{matched}|relu_rnn/normal/clip=none|test loss"])
    lam = claims["t|tanh_rnn/orthogonal/lyapunov/clip=none|target|λ₁ at the end"]
    assert lam["sign"] == 0 and abs(lam["difference"]["estimate"]) < 0.01  # reached its target
    assert "has lower test loss than" in sentence(claims["t|family LSTM|family ReLU|test loss"])
    # both aimed at λ₁ = 0: the ReLU row ended further below it, a claim with its own CI
    relu_lam = claims["t|relu_rnn/orthogonal/lyapunov/clip=none|tanh_rnn/orthogonal/lyapunov/clip=none|λ₁ at the end"]
    assert relu_lam["sign"] == -1 and "lower λ₁ at the end than" in sentence(relu_lam)


def test_config_hash_ignores_keys_added_later_at_their_off_value():
    """A member recorded before the control keys existed keeps its hash (else every study made
    by an older version would be refused as changed); switching one on changes it."""
    from rnn_spectra.config import apply_overrides, default_config
    from rnn_spectra.study.members import config_hash

    c = default_config()
    old = c.to_dict()
    del old["control"], old["model"]["recurrent_param"], old["model"]["margin"]
    assert config_hash(old) == config_hash(c)
    apply_overrides(c, {"control.lyapunov.weight": 0.5})
    assert config_hash(old) != config_hash(c)


def test_a_member_that_diverged_before_its_first_row_is_complete(tmp_path):
    """An SGD member can diverge at step 2, before anything is logged: its summary is its whole
    record, and the report must take it (it was refused as "incomplete (no metrics.jsonl)")."""
    from rnn_spectra.config import default_config
    from rnn_spectra.study.members import problem, record

    c = default_config()
    d = tmp_path / "runs" / "m"
    d.mkdir(parents=True)
    wd.write_json(str(d / wd.CONFIG), c.to_dict())
    wd.write_json(str(d / wd.SUMMARY), {"status": "diverged", "steps_completed": 1,
                                        "diverged_step": 2})
    rec = {"relpath": "runs/m", **record(c)}
    assert problem(str(tmp_path), rec) is None
    wd.write_json(str(d / wd.SUMMARY), {"status": "completed", "steps_completed": c.train.steps})
    assert "no metrics.jsonl" in problem(str(tmp_path), rec).text


def test_time_per_model_is_read_from_a_seed_that_completed():
    """A seed that diverged at step 1 stopped its clock after the compile: its 23 s per step
    would make the row look 10^3 times slower than its group ran."""
    from rnn_spectra.study.results import _seconds_per_1000_steps

    def seed(status, wall, steps):
        return {"summary": {"status": status, "wall_time_s": wall, "steps_completed": steps,
                            "sweep": {"members": 10}}}

    assert _seconds_per_1000_steps([seed("diverged", 23.0, 1), seed("completed", 60.0, 600)]) \
        == pytest.approx(10.0)
    assert _seconds_per_1000_steps([seed("diverged", 23.0, 1)]) is None


def test_diverged_seeds_are_compared_where_sgd_explodes():
    """Every unclipped SGD seed diverged (no test loss to compare), none clipped nor with Adam:
    the exploding claim is made on the share of seeds diverged, not lost with the test losses."""
    from rnn_spectra.study.findings import build_claims
    from rnn_spectra.study.sentences import sentence

    nan = float("nan")
    rows = [_row("irnn/identity", [0.3, 0.2, 0.25, 0.3, 0.2],
                 diverged_by_seed=dict.fromkeys("01234", 0.0)),
            _row("irnn/identity/sgd", [nan] * 5, optimizer="sgd", events=[1] * 5,
                 diverged_by_seed=dict.fromkeys("01234", 1.0)),
            _row("irnn/identity/sgd", [0.15, 0.16, 0.15, 0.14, 0.16], optimizer="sgd",
                 clip="global_norm", diverged_by_seed=dict.fromkeys("01234", 0.0))]
    claims = {c["id"]: c for c in build_claims({"rows": rows})}
    sgd, clipped = "irnn/identity/sgd/clip=none", "irnn/identity/sgd/clip=global_norm"
    c = claims[f"t|{clipped}|{sgd}|share of seeds diverged"]
    assert c["sign"] == -1 and c["difference"]["estimate"] == -1.0
    assert "lower share of seeds diverged" in sentence(c)
    assert claims[f"t|{sgd}|irnn/identity/clip=none|share of seeds diverged"]["sign"] == 1  # vs Adam
    # a diverged seed is the worst outcome, not a missing one: clipping has the lower loss
    assert claims[f"t|{clipped}|{sgd}|test loss"]["sign"] == -1


@pytest.mark.parametrize("chose", ["none", "global_norm"])
def test_an_arm_is_compared_with_the_main_row_whose_pilot_chose_its_clipping(chose):
    """The main row ``relu_rnn/normal`` (clipping chosen in its pilot) is what each SGD row is
    compared with, whichever mode it chose; the SGD rows are still compared with each other."""
    from rnn_spectra.study.findings import build_claims

    main = _row("relu_rnn/normal", [0.5, 0.6, 0.55, 0.5, 0.52], clip=chose, clip_chosen=True)
    main["variant"] = "relu_rnn/normal"
    rows = [main, _row("relu_rnn/normal/sgd", [0.9, 1.2, 0.8, 1.1, 1.0], optimizer="sgd"),
            _row("relu_rnn/normal/sgd", [0.7, 0.8, 0.6, 0.7, 0.75], optimizer="sgd",
                 clip="global_norm")]
    ids = {c["id"] for c in build_claims({"rows": rows})}
    for clip in ("none", "global_norm"):
        assert f"t|relu_rnn/normal/sgd/clip={clip}|relu_rnn/normal|test loss" in ids
    assert "t|relu_rnn/normal/sgd/clip=global_norm|relu_rnn/normal/sgd/clip=none|test loss" in ids


def test_pilot_divergences_are_counted_by_clipping_mode_where_the_pilot_chose_it():
    from rnn_spectra.study.sentences import _pilot_runs

    chosen = {"clip": "global_norm", "runs_by_clip": {"none": [3, 8], "global_norm": [1, 8]}}
    assert _pilot_runs(chosen, False) == (3, 8) and _pilot_runs(chosen, True) == (1, 8)
    own = {"clip": "none", "runs_by_clip": {"none": [2, 8]}}  # a row per mode: its own only
    assert _pilot_runs(own, False) == (2, 8) and _pilot_runs(own, True) == (0, 0)


@pytest.mark.parametrize("name", ["control", "cpu", "cpu-grid", "ladder", "gpu"])
def test_every_program_of_a_phase_gets_its_own_group_folder(name):
    """The control preset's arms of one cell (k, flossing) are programs of their own; the first
    control study's four interventions once shared one folder name (cell, optimizer, clip), so
    each group overwrote the one before."""
    from rnn_spectra import config as config_lib
    from rnn_spectra.study.plan import group_names as _group_names
    from rnn_spectra.sweep import group_by_program

    preset = PRESETS[name]
    members = expand(preset)
    configs = [member_config(preset, m) for m in members]
    groups = group_by_program([config_lib.resolve(c) for c in configs])
    names = _group_names(members, configs, groups)
    assert len(set(names)) == len(groups)
    if name == "control":
        assert "pilot/adding_T20/tanh_rnn_lyapunov_k1_adam_global_norm" in names
        assert not any(n.endswith("_2") for n in names)  # told apart by their tags, not by count


@pytest.mark.parametrize("name,published", [("cpu", "docs"), ("ladder", "docs/ladder"),
                                            ("control", "docs/control")])
def test_the_published_claims_are_of_the_presets_design_today(name, published):
    """`report --check-claims docs` refuses a study of another design: a re-run of a preset
    must hash as its published claims did (a Preset field added later, at its off value, must
    leave the hash alone)."""
    import json

    from rnn_spectra.study.claims import design_hash
    from rnn_spectra.study.run import _preset_dict

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, published, "claims.json")) as f:
        ref = json.load(f)
    assert ref["design"] == design_hash({"preset_fields": _preset_dict(PRESETS[name])})
