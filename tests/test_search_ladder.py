"""An equal tuning budget (every row the same quasi-random points over learning rate, clip
threshold and init gain) and a budget ladder (one pilot's choice confirmed at several budgets)."""

import dataclasses
import math
import os
from collections import defaultdict

import pytest

from rnn_spectra import workdir as wd
from rnn_spectra.study.grid import expand, member_config, trials
from rnn_spectra.study.presets import (GAINLESS_INITS, PRESETS, Preset, Search, TaskEntry, base,
                                       variant)
from rnn_spectra.study.results import build_results
from rnn_spectra.study.run import run_study


def _rows(members):
    rows = defaultdict(list)
    for m in members:
        rows[(m.table, m.row)].append(m)
    return rows


def test_every_row_of_the_cpu_preset_gets_the_same_points_within_the_ranges():
    cpu = PRESETS["cpu"]
    rows = _rows(expand(cpu))
    assert rows and all(len(ms) == cpu.search.trials * len(cpu.pilot_seeds) * len({m.clip for m in ms})
                        for ms in rows.values())
    adam = {(m.learning_rate, m.init_gain) for ms in rows.values() for m in ms
            if m.variant.optimizer != "sgd" and dict(m.variant.config)["model.recurrent_init"]
            not in GAINLESS_INITS}
    assert len(adam) == cpu.search.trials  # one set of points, shared by every Adam row
    for (table, row), ms in rows.items():
        search = ms[0].variant.search or cpu.search
        lo, hi = search.learning_rate
        assert all(lo <= m.learning_rate <= hi for m in ms), row
        init = dict(ms[0].variant.config)["model.recurrent_init"]
        if init in GAINLESS_INITS:
            assert {m.init_gain for m in ms} == {1.0}, row
        else:
            assert all(0.5 <= m.init_gain <= 1.5 for m in ms) and len({m.init_gain for m in ms}) > 1
        assert all(m.clip_value == 0.0 for m in ms if m.clip == "none")
        assert all(0.1 <= m.clip_value <= 10 for m in ms if m.clip == "global_norm")
    # every cell runs without and with clipping (IndRNN: its paper's value clip only)
    clips = defaultdict(set)
    for (table, row), ms in rows.items():
        clips[row.split("/clip=")[0]] |= {m.clip for m in ms}
    assert all(c == {"none", "global_norm"} for v, c in clips.items()
               if not v.startswith("indrnn") and "params=" not in v), clips
    assert clips["indrnn/paper"] == {"value"}


def test_the_cpu_pilot_chooses_the_clipping_mode_of_the_main_rows_with_the_same_points():
    """A main (Adam) row is the variant alone: its pilot runs the search's points without and
    with clipping and chooses among both; the SGD arm, the matched sizes and IndRNN's paper
    clip keep the mode in the row's name (the exploding claim compares the SGD rows)."""
    cpu = PRESETS["cpu"]
    for (table, row), ms in _rows(expand(cpu)).items():
        v = ms[0].variant
        if v.optimizer == "sgd" or v.clips is not None:
            assert row == f"{v.name}/clip={ms[0].clip}" and not ms[0].clip_chosen
            continue
        assert row == v.name and all(m.clip_chosen for m in ms)
        points = {c: {(m.learning_rate, m.init_gain) for m in ms if m.clip == c}
                  for c in ("none", "global_norm")}
        assert len(points["none"]) == cpu.search.trials and points["none"] == points["global_norm"]
        assert len({m.setting for m in ms}) == 2 * cpu.search.trials  # told apart by the _c


def test_the_cpu_pilot_evaluates_only_where_the_choice_reads():
    """The choice reads each pilot member's final validation loss: the pilot evaluates and logs
    at its last step only; the confirmation keeps the base cadence (curves, time to target)."""
    cpu = PRESETS["cpu"]
    pilot = expand(cpu)
    c = member_config(cpu, pilot[0])
    assert c.train.eval_every == c.train.steps == c.train.log_every and c.spectral.every == 0
    confirmed = member_config(cpu, dataclasses.replace(pilot[0], phase="confirm"))
    assert confirmed.train.eval_every == 50 and confirmed.spectral.every == 300


CHOOSING = Preset(
    name="tiny_choose_clip", description="a 2-point search at 6 steps, with and without clipping",
    base=base(hidden_size=8, steps=6, batch_size=4, eval_every=3, eval_batches=1,
              eval_batch_size=8, log_every=3, spectral_every=6),
    tasks=(TaskEntry("adding", 6),), variants=(variant("relu_rnn", "orthogonal", 1.0),),
    clips=("none", "global_norm"), learning_rates=(), clip_values=(),
    search=Search(2, (1e-3, 1e-1), clip_value=(0.01, 0.02)), pilot_seeds=(0,),
    confirm_seeds=(5, 6), test_chunks=1, extend_grid=False, choose_clip=True,
    pilot_config=(("spectral.every", 0), ("train.eval_every", 6), ("train.log_every", 6)))


def test_a_row_whose_pilot_chose_its_clipping_is_confirmed_once_at_its_best(monkeypatch, tmp_path):
    monkeypatch.setitem(PRESETS, CHOOSING.name, CHOOSING)
    w = str(tmp_path / "choose")
    run_study(CHOOSING.name, w)
    recs = wd.read_json(os.path.join(w, "study.json"))["members"]
    pilot = [r for r in recs if r["phase"] == "pilot"]
    assert {r["clip"] for r in pilot} == {"none", "global_norm"} and len(pilot) == 4
    val = {r["setting"]: wd.read_json(os.path.join(w, r["relpath"], "summary.json"))
           ["final_eval"]["loss"] for r in pilot}
    confirm = [r for r in recs if r["phase"] == "confirm"]
    assert {r["setting"] for r in confirm} == {min(val, key=val.get)}  # the best of all four
    assert {r["row"] for r in recs} == {"relu_rnn/orthogonal"}
    (row,) = build_results(w)["rows"]
    assert row["clip_chosen"] and row["pilot_settings"] == 4 and row["pilot_points"] == 2
    assert row["runs_by_clip"] == {"none": [0, 2], "global_norm": [0, 2]}
    report = open(os.path.join(w, "report.md")).read()
    assert f"{row['setting']}, clip {row['clip']}" in report
    assert "the clipping mode itself" in report and "same 2 quasi-random points" in report
    assert "of 2 runs without clipping diverged" in report
    assert "of 2 runs with clipping diverged" in report


def test_the_points_are_fixed_by_the_design_and_change_with_its_seed():
    s = Search(trials=8, learning_rate=(1e-4, 1e-1))
    assert trials(s) == trials(Search(trials=8, learning_rate=(1e-4, 1e-1)))
    assert trials(s) != trials(dataclasses.replace(s, seed=1))
    lrs = sorted(p[0] for p in trials(s))
    # quasi-random: each of 4 equal log-bins of the range holds 2 of the 8 points
    bins = [int(4 * (math.log(x) - math.log(1e-4)) / (math.log(1e-1) - math.log(1e-4))) for x in lrs]
    assert sorted(bins) == [0, 0, 1, 1, 2, 2, 3, 3]


def test_a_members_gain_multiplies_its_variants_init_scale():
    cpu = PRESETS["cpu"]
    m = next(m for m in expand(cpu) if m.variant.name == "relu_rnn/normal" and m.init_gain != 1.0)
    c = member_config(cpu, m)
    assert c.model.init_scale == pytest.approx(math.sqrt(2.0) * m.init_gain)
    assert f"_g{m.init_gain:g}" in m.setting  # the gain is part of the setting's name


LADDER = Preset(
    name="tiny_ladder", description="a 2-point search at 6 steps, confirmed at 6 and 12",
    base=base(hidden_size=4, steps=6, batch_size=4, eval_every=3, eval_batches=1,
              eval_batch_size=8, log_every=3, spectral_every=0),
    tasks=(TaskEntry("adding", 6, (("train.steps", 6),)),
           TaskEntry("adding", 6, (("train.steps", 12),), tuned_on="adding_T6")),
    variants=(variant("tanh_rnn", "orthogonal", 1.0),),
    clips=("none",), learning_rates=(), clip_values=(), search=Search(2, (1e-3, 1e-1)),
    pilot_seeds=(0,), confirm_seeds=(5, 6), test_chunks=1, extend_grid=False)


def test_a_ladder_confirms_the_first_budgets_choice_at_every_budget(monkeypatch, tmp_path):
    monkeypatch.setitem(PRESETS, LADDER.name, LADDER)
    w = str(tmp_path / "ladder")
    run_study(LADDER.name, w)
    recs = wd.read_json(os.path.join(w, "study.json"))["members"]
    assert {r["table"] for r in recs if r["phase"] == "pilot"} == {"adding_T6"}  # one pilot
    confirm = [r for r in recs if r["phase"] == "confirm"]
    assert {r["table"] for r in confirm} == {"adding_T6", "adding_T6_S12"}
    settings = {r["table"]: r["setting"] for r in confirm}
    assert settings["adding_T6"] == settings["adding_T6_S12"]  # carried over, not re-tuned
    rows = build_results(w)["rows"]
    longer = [r for r in rows if r["table"] == "adding_T6_S12"]
    assert len(longer) == 1 and all(r["tuned_on"] == "adding_T6" and r["steps"] == 12
                                    and r["confirmed"] and r["searched"] for r in longer)
    assert all(not r["lr_at_grid_edge"] and r["pilot_settings"] == 2 for r in rows)
    report = open(os.path.join(w, "report.md")).read()
    assert "## Budget ladder: adding_T6" in report and "12 steps" in report
    assert "quasi-random points" in report
    assert os.path.exists(os.path.join(w, "figures", "adding_T6_ladder.png"))
