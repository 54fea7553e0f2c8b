"""Study statistics: intervals behave as intervals should, decisions need the interval off zero,
and a claim check sees holds, flips and undecided claims (calibration: test_calibration.py)."""

import math

import numpy as np
import pytest

from rnn_spectra.study import claims as claims_lib
from rnn_spectra.study.stats import difference_ci, mean_ci, sample_sd


def diff_ci(a, b, paired=False):
    return difference_ci(a, b, paired=paired, scale="linear")


def test_sample_sd_is_the_unbiased_one():
    assert sample_sd([1.0, 3.0]) == pytest.approx(np.sqrt(2.0))  # population sd would be 1.0
    assert sample_sd([1.0]) is None and sample_sd([1.0, float("nan")]) is None


def test_mean_ci_covers_the_mean_and_narrows_with_more_seeds():
    rng = np.random.default_rng(0)
    few, many = rng.normal(1.0, 1.0, 5), rng.normal(1.0, 1.0, 200)
    a, b = mean_ci(few, scale="linear"), mean_ci(many, scale="linear")
    assert a.lo <= few.mean() <= a.hi and b.lo <= many.mean() <= b.hi
    assert (b.hi - b.lo) < (a.hi - a.lo)
    assert mean_ci([2.0]).n == 1 and not mean_ci([2.0]).excludes_zero()
    assert mean_ci([]).n == 0
    geo = mean_ci([0.1, 0.4, float("inf")])  # losses: geometric mean of the finite seeds
    assert geo.n == 2 and np.exp(geo.estimate) == pytest.approx(0.2) and geo.text().startswith("×0.2 [")


def test_paired_difference_removes_the_shared_seed_effect():
    seed_effect = np.array([0.0, 5.0, -3.0, 8.0, 1.0, -6.0])
    a, b = seed_effect + 1.0, seed_effect + 0.9  # A is always 0.1 above B, same seed
    assert diff_ci(a, b, paired=True).lo == pytest.approx(0.1)
    assert diff_ci(a, b, paired=True).excludes_zero()
    assert not diff_ci(a, b, paired=False).excludes_zero()  # swamped by the seed spread


def test_a_decision_needs_the_interval_off_zero():
    lower = diff_ci([1.0, 1.1, 0.9, 1.05], [2.0, 2.1, 1.9, 2.05])
    assert lower.excludes_zero() and lower.hi < 0 and lower.p < 0.05
    noisy = diff_ci([1.0, 3.0, -1.0, 2.0], [1.5, -2.0, 3.0, 0.0])
    assert not noisy.excludes_zero() and noisy.p > 0.05


def test_claims_hold_flip_or_stay_undecided(tmp_path):
    lo = diff_ci([1.0, 1.1, 0.9], [2.0, 2.1, 1.9])
    hi = diff_ci([2.0, 2.1, 1.9], [1.0, 1.1, 0.9])
    none = diff_ci([1.0, 3.0, -1.0], [1.5, -2.0, 3.0])
    ref = [claims_lib.claim("x", "A beats B", "test_loss", "A", "B", lo),
           claims_lib.claim("y", "C beats D", "test_loss", "C", "D", lo),
           claims_lib.claim("z", "E beats F", "test_loss", "E", "F", lo),
           claims_lib.claim("u", "G vs H", "test_loss", "G", "H", none)]
    new = [claims_lib.claim("x", "A beats B", "test_loss", "A", "B", lo),
           claims_lib.claim("y", "C beats D", "test_loss", "C", "D", hi),
           claims_lib.claim("z", "E beats F", "test_loss", "E", "F", none)]
    claims_lib.write_claims(str(tmp_path), ref)
    rows = claims_lib.check(claims_lib.read_claims(str(tmp_path)), new)
    assert [(r["id"], r["verdict"]) for r in rows] == [("x", "HOLDS"), ("y", "FLIPS"), ("z", "UNDECIDED")]
    assert "1 hold, 1 flip, 1 undecided of 3 decided claims." in claims_lib.render_check(rows)


def test_still_learning_needs_a_one_percent_gain_in_the_last_quarter():
    from rnn_spectra.study.criteria import still_learning

    flat = [{"step": s, "loss": v} for s, v in [(25, 0.5), (50, 0.2), (75, 0.2), (100, 0.199)]]
    falling = [{"step": s, "loss": v} for s, v in [(25, 0.5), (50, 0.2), (75, 0.1), (100, 0.05)]]
    assert not still_learning(flat, 100) and still_learning(falling, 100)
    assert still_learning(falling[:2], 100)  # no eval in the last quarter: unknown, never "fails"


def test_still_learning_needs_an_absolute_gain_too_when_the_baseline_is_known():
    from rnn_spectra.study.criteria import still_learning

    # 5e-4 -> 4.9e-4: 2% relative, but 1e-5 is 0.006% of the 0.167 baseline: done, not learning
    tiny = [{"step": s, "loss": v} for s, v in [(25, 1e-3), (50, 5e-4), (75, 5e-4), (100, 4.9e-4)]]
    assert still_learning(tiny, 100) and not still_learning(tiny, 100, 0.167)
    # 0.1 -> 0.05 drops 30% of the baseline: still learning either way
    falling = [{"step": s, "loss": v} for s, v in [(25, 0.5), (50, 0.2), (75, 0.1), (100, 0.05)]]
    assert still_learning(falling, 100, 0.167)
    # an absolute drop without a relative one is not learning either (a loss far above baseline)
    big = [{"step": s, "loss": v} for s, v in [(25, 50.0), (50, 40.0), (75, 40.0), (100, 39.7)]]
    assert not still_learning(big, 100, 0.167)


def test_instability_events_count_spikes_against_the_running_median():
    from rnn_spectra.study.criteria import instability_events

    rows = [{"loss": 1.0, "grad_norm": 1.0}] * 5
    assert instability_events(rows) == 0
    spiky = rows + [{"loss": 11.0, "grad_norm": 1.0}, {"loss": 1.0, "grad_norm": 150.0},
                    {"loss": float("nan"), "grad_norm": 1.0}, {"loss": 9.0, "grad_norm": 99.0}]
    assert instability_events(spiky) == 3
    assert instability_events([{"loss": 100.0, "grad_norm": 1e6}]) == 0  # no history yet


def test_a_gated_claim_the_replica_did_not_make_says_its_pair_was_not_matched_again(tmp_path):
    lo = diff_ci([1.0, 1.1, 0.9], [2.0, 2.1, 1.9])
    gated = "adding_T20|matched λ₁|relu_rnn/a|tanh_rnn/b|test loss"
    ref = [claims_lib.claim(gated, "A beats B", "test_loss", "A", "B", lo),
           claims_lib.claim("x", "C beats D", "test_loss", "C", "D", lo)]
    claims_lib.write_claims(str(tmp_path), ref)
    rows = claims_lib.check(claims_lib.read_claims(str(tmp_path)), [])
    assert [r["verdict"] for r in rows] == ["UNDECIDED", "UNDECIDED"]
    table = claims_lib.render_check(rows).splitlines()
    assert table[2].endswith("| not made: the pair did not pass the match gate on these seeds |")
    assert table[3].endswith("| missing |")
    # what the new seeds' gate compared instead is listed, never as a check of a reference claim
    other = "adding_T20|matched λ₁|relu_rnn/c|tanh_rnn/b|test loss"
    text = claims_lib.render_check(rows) + claims_lib.render_new_gated(
        ref, [claims_lib.claim(other, "E vs B", "test_loss", "E", "B", lo)])
    assert f"| `{other}` | -1 [" in text and "pairs the reference did not compare" in text
    assert claims_lib.render_new_gated(ref, ref) == ""


def test_a_loss_ratio_against_a_row_that_diverged_on_most_seeds_is_said_so_not_printed_as_zero():
    from rnn_spectra.study.sentences import sentence

    inf = math.inf
    ci = difference_ci([0.01, 0.012, 0.011, 0.009, 0.01], [inf, inf, inf, inf, inf])  # log scale
    assert ci.hi == -inf and ci.excludes_zero()
    c = claims_lib.claim("t|A|B|test loss", "A vs B", "test loss", "A", "B", ci)
    text = sentence(c)
    assert "A has lower test loss than B: B diverged on too many seeds for a finite ratio" in text
    assert "×0 [0, 0]" not in text
    finite = sentence(claims_lib.claim("t|A|C|test loss", "A vs C", "test loss", "A", "C",
                                       difference_ci([0.01, 0.012, 0.011, 0.009, 0.01], [0.1] * 5)))
    assert "ratio A/B ×0.1" in finite and "too many seeds" not in finite
