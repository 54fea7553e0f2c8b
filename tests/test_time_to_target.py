"""Time to a target: Kaplan–Meier with censored seeds against a hand computation, censored seeds
counted (never dropped), and the claims that count them as the slowest."""

import math

import pytest
from scipy import stats as sps

from rnn_spectra.study import time_to_target as ttt
from rnn_spectra.study.findings import build_claims
from rnn_spectra.study.stats import difference_ci


def test_kaplan_meier_with_two_censored_seeds_matches_the_hand_computation():
    # 5 seeds: reached at 10, 20, 30; censored at 20 (tied with an event: still at risk there)
    # and at 40. S(10) = 4/5; S(20) = 4/5 * 3/4; the censored seed leaves; S(30) = 0.6 * 1/2.
    km = ttt.kaplan_meier([10, 20, 30, 20, 40], [True, True, True, False, False])
    assert km["steps"] == [10, 20, 30, 40]
    assert km["fraction"] == pytest.approx([0.2, 0.4, 0.7, 0.7])
    # the log-log band at step 10 by hand: Greenwood's sum d / (n (n - d)) = 1 / 20
    s, z = 0.8, float(sps.norm.ppf(0.975))
    sigma = math.sqrt(1 / 20) / abs(math.log(s))
    assert km["lo"][0] == pytest.approx(1 - s ** math.exp(-z * sigma))
    assert km["hi"][0] == pytest.approx(1 - s ** math.exp(z * sigma))
    assert ttt.median(km)[0] == 30  # the first step where half the seeds have reached it


def test_every_seed_reached_has_an_exact_band_not_a_hole():
    km = ttt.kaplan_meier([10, 20, 30, 40], [True] * 4)
    assert km["fraction"][-1] == pytest.approx(1.0)
    # Greenwood is undefined at 100%: Clopper-Pearson's lower bound for 4 of 4
    assert (km["lo"][-1], km["hi"][-1]) == pytest.approx((0.025 ** 0.25, 1.0))
    assert all(math.isfinite(v) for v in km["lo"] + km["hi"])


def _seed(seed, losses, status="completed", every=10):
    rows = [{"step": every * (i + 1), "split": "eval", "loss": v} for i, v in enumerate(losses)]
    return {"seed": seed, "summary": {"status": status}, "metrics": rows}


def _eval(m):
    return m["metrics"]


def test_censored_seeds_are_counted_not_dropped():
    """3 of 10 seeds reach the target: the curve ends at 0.3 and there is no median (dropping
    the other 7 would give a median of the 3)."""
    fast = [_seed(s, [0.5, 0.05, 0.01]) for s in range(3)]  # below 0.1 x 1 at step 20
    slow = [_seed(s, [0.9, 0.8, 0.7]) for s in range(3, 9)]
    gone = [_seed(9, [0.9], status="diverged")]  # diverged after its first eval
    t, = ttt.row_times(fast + slow + gone, _eval, 1.0, 30, (0.1,), seconds_per_step=0.01)
    assert (t["reached"], t["seeds"]) == (3, 10)
    assert t["km"]["fraction"][-1] == pytest.approx(0.3) and t["median_steps"] is None
    assert t["median_seconds"] is None
    assert set(t["censored_at_by_seed"]) == {str(s) for s in range(3, 10)}
    # a diverged seed never reaches the target: censored at the step cap, not at step 10
    assert t["censored_at_by_seed"]["9"] == 30
    assert ttt.outcomes(t)["9"] == math.inf and ttt.outcomes(t)["0"] == 20
    assert ttt.cell_text(t) == "not reached; 3/10 reached"


def test_seconds_are_steps_times_one_models_step_and_old_studies_keep_their_one_target():
    t, = ttt.row_times([_seed(s, [0.45, 0.4, 0.01]) for s in range(4)], _eval, 1.0, 30, (0.5,),
                       seconds_per_step=0.002)
    assert (t["median_steps"], t["median_seconds"]) == (10, pytest.approx(0.02))
    assert ttt.fractions({"target_fraction": 0.5}) == (0.5,)  # a study.json from before
    assert ttt.fractions({"target_fractions": [0.5, 0.1]}) == (0.5, 0.1)


def _row(variant, steps, val, cap=100):
    """A result row whose seeds took ``steps`` (None: not reached) to reach 0.5x baseline."""
    seeds = [_seed(i, [0.9 if s is None or 10 * (k + 1) < s else 0.1 for k in range(cap // 10)])
             for i, s in enumerate(steps)]
    times = ttt.row_times(seeds, _eval, 1.0, cap, (0.5,), None)
    return {"table": "t", "variant": variant, "setting": "s", "pilot_val_loss_mean": val,
            "baseline": 1.0, "seeds": len(steps), "optimizer": "adam", "clip": "none",
            "test_losses": {str(i): 0.1 for i in range(len(steps))}, "time_to_target": times}


def test_the_claim_counts_a_seed_that_never_reached_the_target_as_the_slowest():
    gru = _row("gru/orthogonal/clip=none", [10, 10, 20, 20, 20, 30], 0.1)
    tanh = _row("tanh_rnn/orthogonal/clip=none", [40, 50, 60, 70, None, None], 0.2)
    claims = {c["id"]: c for c in build_claims({"rows": [gru, tanh]})}
    c = claims["t|family GRU|family tanh|steps to 0.5× baseline"]
    assert c["family"] == "t|steps to 0.5× baseline" and c["family_size"] == 1
    assert c["not_reached"] == {"tanh_rnn/orthogonal/clip=none": [2, 6],
                                "gru/orthogonal/clip=none": [0, 6]}
    inf = [40, 50, 60, 70, math.inf, math.inf]
    want = difference_ci([10, 10, 20, 20, 20, 30], inf, paired=True, level=c["difference"]["level"])
    assert c["difference"]["estimate"] == pytest.approx(want.estimate)
    assert (c["difference"]["lo"], c["difference"]["hi"]) == pytest.approx((want.lo, want.hi))
    assert c["difference"]["method"] == "rank" and c["sign"] == -1  # GRU sooner
    assert (c["difference"]["n"], c["difference"]["n_b"]) == (6, 6)  # every seed, none dropped


def test_a_side_that_never_reached_the_target_is_said_so_not_printed_as_a_zero_ratio():
    from rnn_spectra.study.sentences import sentence

    gru = _row("gru/orthogonal/clip=none", [10, 10, 20, 20, 20, 30], 0.1)
    some = _row("tanh_rnn/orthogonal/clip=none", [40, 50, 60, 70, None, None], 0.2)
    none = _row("tanh_rnn/orthogonal/clip=none", [None] * 6, 0.2)
    key = "t|family GRU|family tanh|steps to 0.5× baseline"
    finite = sentence({c["id"]: c for c in build_claims({"rows": [gru, some]})}[key])
    assert "ratio of steps A/B ×" in finite and "too many seeds" not in finite
    c = {c["id"]: c for c in build_claims({"rows": [gru, none]})}[key]
    assert c["sign"] == -1 and math.isinf(c["difference"]["hi"])
    text = sentence(c)
    assert "best tanh did not reach it on too many seeds for a finite ratio" in text
    assert "×0 [0, 0]" not in text and "tanh_rnn/orthogonal/clip=none 6/6 seeds" in text
