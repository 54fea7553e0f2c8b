"""The control study's match gate (issue #28) on synthetic rows: which tanh/ReLU pairs it admits,
the floor, the claims it lets through, and the report's match table; the control preset's design."""

import math

import pytest

from rnn_spectra.study import match_gate as gate
from rnn_spectra.study.findings import LOSS, build_claims

SEEDS = ("100", "101", "102", "103", "104")
BASELINE = 1 / 6


def _row(variant, losses, lam=None, *, target=None, slope=None, table="adding_T20", **kw):
    reg = None if target is None else {"weight": 1.0, "k": 1, "target": target, "until": 0,
                                       "seq_len": 0, "discard": 0.25, "probes": 4, "every": 1}
    return dict(table=table, task="adding", variant=f"{variant}/clip=none", setting="lr0.001",
                clip="none", baseline=BASELINE, seeds=len(losses), optimizer="adam",
                pilot_val_loss_mean=sum(losses) / len(losses),
                test_losses=dict(zip(SEEDS, losses)), test_baselines=dict.fromkeys(SEEDS, BASELINE),
                diverged_by_seed=dict.fromkeys(SEEDS, 0.0), seeds_diverged=0,
                lyapunov_target=target, lyapunov_control=reg,
                lyapunov_top_end_by_seed=dict(zip(SEEDS, lam or [-0.2] * 5)),
                lag_slope_end_by_seed=dict(zip(SEEDS, slope or [-0.1] * 5)),
                dead_units_init=0.5 if "relu" in variant or "irnn" in variant else 0.0,
                dead_units_end=0.6 if "relu" in variant or "irnn" in variant else 0.0,
                **{"confirmed": True, **kw})


LEARNED = [0.010, 0.012, 0.011, 0.009, 0.013]
TANH_LAM = [-0.050, -0.040, -0.060, -0.045, -0.055]


def _design(relu_lam, tanh_losses=LEARNED, relu_losses=(0.020, 0.025, 0.022, 0.018, 0.024)):
    """A plain tanh and ReLU row and one of each aimed at lambda_1 = -0.05."""
    return [_row("tanh_rnn/orthogonal", tanh_losses, [-0.3] * 5),
            _row("relu_rnn/orthogonal", list(relu_losses), [-0.1] * 5),
            _row("tanh_rnn/orthogonal/lyapunov_k1/w=1/target=-0.05", tanh_losses, TANH_LAM,
                 target=-0.05),
            _row("relu_rnn/orthogonal/lyapunov_k1/w=1/target=-0.05", list(relu_losses), relu_lam,
                 target=-0.05)]


def test_the_gate_admits_a_pair_whose_interval_lies_inside_the_tolerance_and_refuses_a_wider_one():
    near = [x + d for x, d in zip(TANH_LAM, (0.003, -0.002, 0.001, 0.0, -0.001))]
    inside = gate.pairs(_design(near), "λ₁")
    aimed = next(p for p in inside if p.target == -0.05)
    assert aimed.matched and aimed.width <= gate.TOLERANCE
    assert aimed.ci.method == "t" and aimed.ci.scale == "linear"  # paired by seed, linear
    # the same mean difference, but seeds that spread: the interval reaches past +-0.02
    spread = [x + d for x, d in zip(TANH_LAM, (0.04, -0.035, 0.03, -0.04, 0.006))]
    wide = next(p for p in gate.pairs(_design(spread), "λ₁") if p.target == -0.05)
    assert abs(wide.ci.estimate) < gate.TOLERANCE < wide.width and not wide.matched
    # an offset pair is refused though tight; the plain rows (-0.1 vs -0.3) are no match
    off = next(p for p in gate.pairs(_design([x + 0.03 for x in TANH_LAM]), "λ₁") if p.target == -0.05)
    assert not off.matched
    assert not next(p for p in inside if p.target is None).matched
    # a seed that diverged: its last spectrum is not a trained network's
    rows = _design(near)
    rows[3].update(seeds_diverged=1, diverged_by_seed={**rows[3]["diverged_by_seed"], "104": 1.0})
    assert not next(p for p in gate.pairs(rows, "λ₁") if p.target == -0.05).matched


def test_only_the_matched_pair_carries_a_loss_claim_between_the_nonlinearities():
    near = [x + d for x, d in zip(TANH_LAM, (0.003, -0.002, 0.001, 0.0, -0.001))]
    claims = {c["id"]: c for c in build_claims({"rows": _design(near)})}
    relu, tanh = ("relu_rnn/orthogonal/lyapunov_k1/w=1/target=-0.05/clip=none",
                  "tanh_rnn/orthogonal/lyapunov_k1/w=1/target=-0.05/clip=none")
    c = claims[f"adding_T20|matched λ₁|{relu}|{tanh}|test loss"]
    assert c["family"] == "adding_T20|matched λ₁" and c["quantity"] == LOSS
    assert c["sign"] == 1  # the ReLU rows' losses are twice the tanh rows'
    # no other loss comparison between tanh and ReLU: the families' representatives are not
    # compared, matched or not
    cross = {c["family"] for c in claims.values() if c["quantity"] == LOSS and c["b"] != "baseline"
             and "tanh" in c["a"] + c["b"] and ("relu" in c["a"] + c["b"] or "ReLU" in c["a"] + c["b"])}
    # (the lag slopes, -0.1 in every row, match too: claims of their own family)
    assert cross == {"adding_T20|matched λ₁", "adding_T20|matched lag slope"}
    assert sum(c["family"] == "adding_T20|matched λ₁" for c in claims.values()) == 1
    # a wide pair is compared on nothing
    spread = [x + d for x, d in zip(TANH_LAM, (0.04, -0.035, 0.03, -0.04, 0.006))]
    wide = build_claims({"rows": _design(spread)})
    assert not [c for c in wide if c["family"] == "adding_T20|matched λ₁"]


def test_a_table_at_the_floor_is_reported_so_and_keeps_no_loss_claim_but_the_baselines():
    near = [x + d for x, d in zip(TANH_LAM, (0.003, -0.002, 0.001, 0.0, -0.001))]
    floor = [0.166, 0.167, 0.168, 0.165, 0.1675]  # the memoryless predictor's loss, as T = 200
    rows = _design(near, tanh_losses=floor, relu_losses=[0.167, 0.166, 0.1665, 0.168, 0.165])
    assert gate.at_floor(rows)
    assert not gate.at_floor(_design(near))
    claims = build_claims({"rows": rows})
    losses = [c for c in claims if c["quantity"] == LOSS]
    assert losses and all(c["b"] == "baseline" for c in losses)
    assert any(c["quantity"] == "λ₁ at the end" for c in claims)  # dynamics claims stay
    # one row that learned lifts the floor (an unconfirmed one does not)
    learned = _row("irnn/identity", LEARNED, [-0.01] * 5, confirmed=False)
    assert gate.at_floor(rows + [learned])
    assert not gate.at_floor(rows + [{**learned, "confirmed": True}])


def test_the_gate_applies_only_to_the_control_design():
    """A study without regularised rows of both nonlinearities keeps its comparisons (the cpu
    study's published claims)."""
    rows = _design([-0.05] * 5)
    assert gate.applies(rows)
    assert not gate.applies([r for r in rows if "tanh" not in r["variant"] or r["lyapunov_target"] is None])
    plain = [r for r in rows if r["lyapunov_target"] is None]
    ids = {c["id"] for c in build_claims({"rows": plain})}
    assert "adding_T20|family ReLU|family tanh|test loss" in ids


def test_lag_slope_is_the_least_squares_slope_and_minus_infinity_where_a_product_vanishes():
    from rnn_spectra.spectral.rows import lag_slope

    lags = [1, 2, 4, 8, 16]
    assert math.isclose(lag_slope({"lags": lags, "jac_log_norm/mean": [0.3 - 0.05 * k for k in lags]}),
                        -0.05)
    assert lag_slope({"lags": lags, "jac_log_norm/mean": [0.0, -1.0, "-inf", "-inf", "-inf"]}) == -math.inf
    assert lag_slope({"lags": [1], "jac_log_norm/mean": [0.0]}) is None


def test_the_report_shows_the_match_table_first_with_dead_units_beside_it():
    from rnn_spectra.study.control_report import match_section
    from rnn_spectra.study.report import render_markdown

    near = [x + d for x, d in zip(TANH_LAM, (0.003, -0.002, 0.001, 0.0, -0.001))]
    from rnn_spectra.study.stats import mean_ci

    rows = [{**r, "target_fraction": 0.5, "steps": 600, "steps_to_target": None, "params": 1153,
             "test_loss_ci": mean_ci(list(r["test_losses"].values()), scale="log").as_dict(),
             "seeds_solved": 0, "seeds_still_learning": 0, "seconds_per_1000_steps": 1.0,
             "runs_by_clip": {"none": [0, 10]},
             "lyapunov_windows": {"monitor": [5, 20], "regularised": None}} for r in _design(near)]
    results = {"rows": rows, "preset": "control", "machine": "m", "jax": "0", "started": "s",
               "finished": "f", "members": 20, "wall_time_s": 1.0}
    claims = build_claims(results)
    text = render_markdown(results, [], claims)
    assert text.index("## Matched dynamics") < text.index("## Findings")
    section = "\n".join(match_section(results, claims))
    assert "off the floor" in section and "±0.02" in section
    assert "50% → 60%" in section and "0% → 0%" in section  # dead units of the ReLU and tanh rows
    assert "**yes**" in section and "adding_T20|matched λ₁|" in section
    assert "steps 5 to 19" in section  # the window the regulariser steered is the monitor's
    # the dose table gives a row's test loss as every table does: geometric mean [95% CI]
    dose = next(l for l in section.splitlines() if l.startswith("| relu_rnn/orthogonal | always"))
    geo = mean_ci((0.020, 0.025, 0.022, 0.018, 0.024), scale="log").text(ratio=False)
    assert f"; {geo}; dead 60%" in dose
    # a design without clipped rows counts only its unclipped runs (no "0 of 0 ... with clipping")
    assert "runs without clipping diverged" in text and "with clipping diverged" not in text
    assert match_section({"rows": [r for r in rows if "tanh" not in r["variant"]]}, []) == []


def test_the_control_preset_expands_to_the_dose_response_design():
    from rnn_spectra.config import SpectralConfig, resolve
    from rnn_spectra.study import presets as P
    from rnn_spectra.study.grid import expand, member_config

    preset = P.PRESETS["control"]
    names = {v.name for v in preset.variants}
    cells = ("tanh_rnn/orthogonal", "relu_rnn/orthogonal", "irnn/identity")
    doses = {f"{c}/lyapunov_k{k}/w={w:g}/target={t:g}" for c in cells for k in (1, 8)
             for w in (0.1, 1, 10) for t in (-0.1, -0.03, 0)}
    floss = {f"{c}/floss{P.FLOSS_STEPS}_k{k}/w=1/target=0" for c in cells for k in (1, 8)}
    assert names == set(cells) | doses | floss
    members = expand(preset)
    assert len(members) == sum(len(v.learning_rates or preset.learning_rates)
                               for v in preset.variants) * len(preset.pilot_seeds)
    runs = {m.variant.name: resolve(member_config(preset, m)) for m in members}
    burn_in = SpectralConfig().lyapunov_discard
    for name, run in runs.items():
        lc = run.control.lyapunov
        if name in cells:
            assert lc.weight == 0
            continue
        # the regulariser's window is the whole sequence after the monitor's burn-in
        assert lc.weight > 0 and lc.seq_len == 0 and lc.discard == burn_in
        assert lc.window(run.task.seq_len) == (run.task.seq_len, round(burn_in * run.task.seq_len))
        assert lc.until == (P.FLOSS_STEPS if "/floss" in name else 0)
    # weight and target are state: one program per cell, k and arm (relu_rnn and irnn share it)
    from rnn_spectra.sweep import group_by_program

    assert len(group_by_program(list(runs.values()))) == 2 * (1 + 2 + 2)


@pytest.mark.parametrize("seq_len", [0, 2, 50])
def test_a_window_of_zero_is_the_whole_sequence(seq_len):
    from rnn_spectra.config import LyapunovControlConfig

    lc = LyapunovControlConfig(seq_len=seq_len)
    T = 20 if seq_len == 0 else min(seq_len, 20)
    assert lc.window(20) == (T, min(round(0.25 * T), T - 1))


def test_a_window_of_one_step_is_refused_by_name():
    from rnn_spectra.config import LyapunovControlConfig
    from rnn_spectra.errors import ConfigError

    with pytest.raises(ConfigError, match="control.lyapunov.seq_len must be 0 or an integer >= 2"):
        LyapunovControlConfig(seq_len=1)


def test_gated_claims_are_records_report_check_claims_reads(tmp_path):
    """The matched pair's loss claim is written to claims.json like any other and holds when a
    study with the same numbers is checked against it (``report --check-claims``)."""
    from rnn_spectra.study.claims import HOLDS, check, read_claims, write_claims

    near = [x + d for x, d in zip(TANH_LAM, (0.003, -0.002, 0.001, 0.0, -0.001))]
    write_claims(str(tmp_path), build_claims({"rows": _design(near)}), {"preset": "control"})
    claims = read_claims(str(tmp_path))
    gated = [c for c in claims if c["family"] == "adding_T20|matched λ₁"]
    assert len(gated) == 1 and gated[0]["sign"] == 1
    verdicts = {r["id"]: r["verdict"] for r in check(claims, claims)}
    assert verdicts[gated[0]["id"]] == HOLDS


@pytest.mark.slow
def test_a_toy_control_study_reports_the_match_table_first(tmp_path, monkeypatch):
    """The control design at toy size through `study` and `report`: the rows carry the gate's
    columns, the report opens with the match table, no ungated tanh-vs-ReLU loss claim is made,
    and the matched pairs' figures are drawn."""
    import dataclasses
    import json
    import os

    from rnn_spectra.study import presets as P
    from rnn_spectra.study.run import run_study

    cells = P.CONTROL_CELLS[:2]  # tanh/orthogonal, relu_rnn/orthogonal
    doses = tuple(P.regularised(v, 1, w, 0.0) for v in cells for w in (0.1, 10.0)) + tuple(
        P.regularised(v, 1, 1.0, 0.0, until=3) for v in cells)
    toy = dataclasses.replace(
        P.PRESETS["control"], name="toy-control", tasks=(P.TaskEntry("adding", 8),),
        variants=cells + tuple(dataclasses.replace(v, learning_rates=None) for v in doses),
        base=P.base(hidden_size=8, steps=6, batch_size=8, eval_every=3, eval_batches=1,
                    eval_batch_size=32, log_every=3, spectral_every=3),
        learning_rates=(1e-2,), pilot_seeds=(0,), confirm_seeds=(1, 2), extend_grid=False,
        test_chunks=1)
    monkeypatch.setitem(P.PRESETS, "toy-control", toy)
    w = str(tmp_path / "w")
    run_study("toy-control", w, workers=1)
    results = json.load(open(os.path.join(w, "results.json")))
    aimed = [r for r in results["rows"] if r["lyapunov_control"]]
    assert len(aimed) == 6 and all(r["lyapunov_control"]["seq_len"] == 0 for r in aimed)
    assert all(r["lyapunov_windows"]["regularised"] is None for r in aimed)  # the monitor's window
    assert all(set(r["lag_slope_end_by_seed"]) == {"1", "2"} for r in results["rows"])
    report = open(os.path.join(w, "report.md")).read()
    assert report.index("## Matched dynamics") < report.index("## Findings")
    claims = json.load(open(os.path.join(w, "claims.json")))["claims"]
    assert not [c for c in claims if "family ReLU" in c["id"] and "family tanh" in c["id"]]
    assert os.path.exists(os.path.join(w, "figures", "adding_T8_matched_sigma_max.png"))
    assert "figures/adding_T8_matched_sigma_max.png" in report
