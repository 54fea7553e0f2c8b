"""Early-spectrum predictors (issue #15): rank correlation and AUC match hand computations, CIs
are seeded intervals around the estimate, and the per-table analysis finds a planted signal."""

import math
import os

import numpy as np
import pytest

from rnn_spectra.study.predictors import (
    QUANTITIES, WHEN, auc_ci, predictor_table, predictors_figure, render_predictors, spearman_ci,
)


def _ref_ranks(v):
    """Average ranks by the definition: 1 + #less + (#equal - 1) / 2."""
    v = np.asarray(v, dtype=float)
    return np.array([1 + np.sum(v < a) + (np.sum(v == a) - 1) / 2 for a in v])


def _ref_spearman(x, y):
    return float(np.corrcoef(_ref_ranks(x), _ref_ranks(y))[0, 1])


def test_spearman_monotone_reversed_and_ties():
    x = [0.1, 0.5, 2.0, 3.0, 10.0]
    assert spearman_ci(x, np.exp(x), n_boot=200).estimate == pytest.approx(1.0)
    assert spearman_ci(x, [-v ** 3 for v in x], n_boot=200).estimate == pytest.approx(-1.0)
    # Ties: ranks x = 1, 2.5, 2.5, 4, 5 and y = 1.5, 1.5, 3, 5, 4 -> rho = 7.75 / sqrt(9.5 * 9.5).
    tx, ty = [1.0, 2.0, 2.0, 3.0, 4.0], [5.0, 5.0, 6.0, 9.0, 8.0]
    assert spearman_ci(tx, ty, n_boot=200).estimate == pytest.approx(7.75 / 9.5)
    assert spearman_ci(tx, ty, n_boot=200).estimate == pytest.approx(_ref_spearman(tx, ty))
    rng = np.random.default_rng(3)
    a, b = rng.integers(0, 4, 30).astype(float), rng.normal(size=30)
    assert spearman_ci(a, b, n_boot=200).estimate == pytest.approx(_ref_spearman(a, b))


def test_spearman_edge_cases_and_neginf_ranks_lowest():
    assert math.isnan(spearman_ci([1.0, 2.0], [1.0, 2.0]).estimate)  # < 3 pairs
    assert math.isnan(spearman_ci([1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0]).estimate)  # constant
    ci = spearman_ci([None, float("nan"), 1.0, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0, 5.0], n_boot=100)
    assert ci.n == 3 and ci.estimate == pytest.approx(1.0)
    # -inf is a value (lambda_1 of a vanished product), the lowest one, tied with other -infs.
    x = [-math.inf, -math.inf, -1.0, 0.5]
    y = [0.0, 0.0, 1.0, 2.0]
    assert spearman_ci(x, y, n_boot=100).estimate == pytest.approx(1.0)


def test_auc_is_the_fraction_of_correctly_ordered_pairs():
    scores = [0.1, 0.4, 0.4, 0.8, 0.3, 0.9]
    labels = [False, False, True, True, False, True]
    pos = [s for s, l in zip(scores, labels) if l]
    neg = [s for s, l in zip(scores, labels) if not l]
    pairs = [1.0 if p > q else 0.5 if p == q else 0.0 for p in pos for q in neg]
    assert auc_ci(scores, labels, n_boot=200).estimate == pytest.approx(np.mean(pairs))
    assert np.mean(pairs) == pytest.approx(8.5 / 9)  # (0.4, 0.4) a tie
    assert auc_ci([1, 2, 3, 4], [0, 0, 1, 1], n_boot=100).estimate == 1.0
    assert auc_ci([1, 2, 3, 4], [1, 1, 0, 0], n_boot=100).estimate == 0.0  # lower predicts success
    assert auc_ci([2, 2, 2, 2], [0, 1, 0, 1], n_boot=100).estimate == 0.5
    assert math.isnan(auc_ci([1, 2, 3], [1, 1, 1]).estimate)  # one class
    assert auc_ci([-math.inf, 0.0, 1.0], [0, 1, 1], n_boot=100).estimate == 1.0


def test_cis_contain_the_estimate_and_are_seeded():
    rng = np.random.default_rng(0)
    x = rng.normal(size=40)
    y = x + rng.normal(size=40)
    s = spearman_ci(x, y, n_boot=2000)
    assert s.lo <= s.estimate <= s.hi and s.lo > 0 and s.n == 40
    assert spearman_ci(x, y, n_boot=2000) == s
    assert spearman_ci(x, y, n_boot=2000, seed=1) != s
    a = auc_ci(x, y > 0, n_boot=2000)
    assert a.lo <= a.estimate <= a.hi and a.estimate > 0.5
    assert auc_ci(x, y > 0, n_boot=2000) == a


def _row(step, sv, step_norm, lam, near_zero, jac_T):
    """A spectra row with the monitor's key names (non-finite values as the writers store them)."""
    return {"step": step, "sv/W_s": [sv, sv / 2], "spectral_radius/W_s": sv * 0.9,
            "lyapunov/mean": [lam if math.isfinite(lam) else str(lam), lam - 1.0],
            "lyapunov/near_zero/mean": near_zero, "step_norm/mean": step_norm,
            "lags": [1, 10, 100], "jac_log_norm/mean": [0.0, jac_T / 2, jac_T],
            "grad_flow/t": [1, 100], "grad_flow/log_norm": [-3.0, 0.0]}


def _members(n=24, seed=0):
    """Members of two tables whose loss falls as sigma_max (and everything with it) grows."""
    rng = np.random.default_rng(seed)
    out = []
    for table, baseline in (("adding_T100", 0.167), ("copying_T50", 1.0)):
        for i in range(n):
            g = rng.uniform(0.5, 1.5)
            ratio = 2.0 - g + rng.normal(0, 0.05)  # beats the baseline iff g > ~1
            status = "diverged" if i == 0 else "completed"
            lam = -math.inf if i == 1 else math.log(g)
            spectra = [_row(0, g, g * 0.8, lam, 1.0 + g, 100 * math.log(g)),
                       _row(50, g * 1.1, g * 0.9, lam + 0.01, 2.0, 100 * math.log(g) + 1)]
            out.append({"table": table, "row": "tanh", "seed": i, "spectra": spectra,
                        "summary": {"status": status, "baseline": baseline,
                                    "test": {"loss": (math.nan if status == "diverged"
                                                      else ratio * baseline)}}})
    return out


def test_predictor_table_finds_the_planted_sign(tmp_path):
    rows = predictor_table(_members(), n_boot=500)
    assert len(rows) == 2 * len(QUANTITIES) * len(WHEN)
    by = {(r["table"], r["quantity"], r["when"]): r for r in rows}
    for table in ("adding_T100", "copying_T50"):
        for when in WHEN:
            r = by[(table, "sigma_max", when)]
            assert r["n"] == 24 and r["diverged_skipped"] == 1 and r["spearman"]["n"] == 23
            assert r["spearman"]["estimate"] < -0.8 and r["spearman"]["hi"] < 0
            assert r["auc"]["estimate"] > 0.8 and r["auc"]["lo"] > 0.5 and r["auc"]["n"] == 24  # the diverged one: a failure
            assert r["steps"] == ([0] if when == "init" else [50])
        assert by[(table, "log_jac_T", "init")]["spearman"]["estimate"] < -0.8
        lam = by[(table, "lyapunov_top", "init")]
        assert lam["n"] == 24 and lam["spearman"]["estimate"] < -0.7  # -inf kept, ranked lowest
        assert math.isnan(by[(table, "near_zero", "first")]["spearman"]["estimate"])  # constant
    lines = render_predictors(rows)
    text = "\n".join(lines)
    assert "| adding_T100 | σ_max(W) | init | 0 | 24 |" in text
    assert "not distinguishable from" not in by_line(lines, "adding_T100 | σ_max(W) | init")
    path = predictors_figure(rows, str(tmp_path / "fig" / "predictors.png"))
    assert os.path.getsize(path) > 1000


def by_line(lines, needle):
    return next(line for line in lines if needle in line)


def test_render_marks_undecided_and_missing():
    noisy = predictor_table(_members(n=4, seed=5), n_boot=300)
    text = "\n".join(render_predictors(noisy))
    assert "not distinguishable from 0 at this budget" in text
    assert "–" in text  # a NaN estimate (constant near_zero at the first step) prints as a dash
