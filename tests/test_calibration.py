"""The comparison function's calibration, by seeded simulation at the seed counts a study uses:
under a true null it decides at most ~5% of draws (6% allowed for simulation noise); a clear
effect is decided; a row with diverged seeds is never declared the better one. The same
harness run on the percentile bootstrap the study used before shows why it was replaced."""

import math

import numpy as np
import pytest

from rnn_spectra.study import stats
from rnn_spectra.study.stats import difference_ci, one_sample_ci, share_difference

DRAWS = 2000


def _draw(rng, dist: str, size) -> np.ndarray:
    """Positive per-seed losses around 0.1 with the given shape of spread."""
    if dist == "normal":
        return rng.normal(0.1, 0.02, size)  # > 0 in all but ~1e-7 of draws
    if dist == "lognormal":
        return 0.1 * np.exp(rng.normal(0.0, 1.0, size))
    if dist == "heavy":  # log loss with Student-t (2 df) tails: a 1e3x outlier now and then
        return 0.1 * np.exp(rng.standard_t(2, size))
    raise ValueError(dist)


def _decided_rate(make_pair, compare, draws: int = DRAWS, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(draws):
        a, b = make_pair(rng)
        hits += compare(a, b).excludes_zero()
    return hits / draws


def _null_pair(dist: str, n: int, shared: bool):
    def make(rng):
        # shared: the seed's own luck (init, data order) moves both rows the same way
        seed_effect = np.exp(rng.normal(0.0, 0.5, n)) if shared else np.ones(n)
        return seed_effect * _draw(rng, dist, n), seed_effect * _draw(rng, dist, n)
    return make


@pytest.mark.parametrize("n", [10, 5, 3])  # 10: the cpu and ladder presets' confirmation
@pytest.mark.parametrize("dist", ["normal", "lognormal", "heavy"])
def test_null_is_decided_at_most_six_percent(dist, n):
    paired = _decided_rate(_null_pair(dist, n, shared=True), lambda a, b: difference_ci(a, b))
    unpaired = _decided_rate(_null_pair(dist, n, shared=False),
                             lambda a, b: difference_ci(a, b, paired=False), seed=1)
    assert paired <= 0.06 and unpaired <= 0.06, (paired, unpaired)


def _percentile_bootstrap_diff(a, b, n_boot=2000, seed=0):
    """The method the study used before (paired percentile bootstrap of the mean difference)."""
    d = np.asarray(a) - np.asarray(b)
    boot = d[np.random.default_rng(seed).integers(0, d.size, (n_boot, d.size))].mean(axis=1)
    lo, hi = np.quantile(boot, [0.025, 0.975])
    return stats.Interval(float(d.mean()), float(lo), float(hi), d.size)


def test_the_percentile_bootstrap_fails_the_same_check():
    """The harness above would fail on the old method: ~17% decided at n = 5 under the null."""
    rate = _decided_rate(_null_pair("normal", 5, shared=False), _percentile_bootstrap_diff, draws=1000)
    assert rate > 0.12


@pytest.mark.parametrize("paired", [True, False])
def test_a_clear_effect_is_decided(paired):
    """A 3x lower geometric-mean loss with a log-sd of 0.3, 5 seeds: decided in >= 90%."""
    def make(rng):
        return 0.1 * np.exp(rng.normal(0, 0.3, 5)), 0.3 * np.exp(rng.normal(0, 0.3, 5))
    rate = _decided_rate(make, lambda a, b: difference_ci(a, b, paired=paired))
    assert rate >= 0.9


@pytest.mark.parametrize("n,k", [(5, 1), (5, 2), (10, 1), (10, 3)])
def test_a_row_with_diverged_seeds_is_never_declared_better(n, k):
    rng = np.random.default_rng(0)
    better, worse = 0, 0
    for _ in range(DRAWS):
        a = 0.01 * np.exp(rng.normal(0, 0.3, n))  # 10x better on the seeds that survived
        b = 0.1 * np.exp(rng.normal(0, 0.3, n))
        a[rng.choice(n, k, replace=False)] = math.inf
        ci = difference_ci(list(a), list(b))
        better += ci.hi < 0 or (ci.p is not None and ci.p <= 0.05 and ci.estimate < 0)
        worse += ci.lo > 0
        assert ci.n == n  # counted, not dropped
    assert better == 0 and worse == 0
    ci = difference_ci([math.inf] * n, list(b))  # every seed diverged: decided worse
    assert ci.lo > 0 and ci.p <= 0.05


def test_diverged_seeds_on_both_sides_keep_the_null_calibrated():
    def make(rng):
        a, b = _draw(rng, "lognormal", 5), _draw(rng, "lognormal", 5)
        a[rng.random(5) < 0.3] = math.inf
        b[rng.random(5) < 0.3] = math.inf
        return a, b
    assert _decided_rate(make, lambda a, b: difference_ci(list(a), list(b))) <= 0.06


def test_one_sample_against_a_baseline_is_calibrated_and_counts_divergence():
    rate = _decided_rate(lambda rng: (_draw(rng, "lognormal", 5), None),
                         lambda a, _: one_sample_ci(a, 0.1))
    assert rate <= 0.06
    ci = one_sample_ci([0.01, 0.012, 0.011, 0.009, math.inf], 0.1667)
    assert ci.hi == math.inf and not ci.excludes_zero()  # a diverged seed: never "below baseline"
    assert one_sample_ci([0.01, 0.012, 0.011, 0.009, 0.01], 0.1667).hi < 0


def test_share_of_diverged_seeds_uses_an_exact_test():
    three_of_five = share_difference(3, 5, 0, 5)
    assert three_of_five.p > 0.05  # Fisher: 0.17; the bootstrap of 0/1 called it decided
    assert share_difference(5, 5, 0, 5).p <= 0.01
    rng = np.random.default_rng(0)
    null = [share_difference(int((rng.random(5) < 0.3).sum()), 5,
                             int((rng.random(5) < 0.3).sum()), 5).p <= 0.05 for _ in range(DRAWS)]
    assert np.mean(null) <= 0.05


def test_linear_scale_for_quantities_that_can_be_negative():
    lam_a, lam_b = [-0.10, -0.11, -0.09, -0.10, -0.12], [-0.05, -0.04, -0.06, -0.05, -0.05]
    ci = difference_ci(lam_a, lam_b, scale="linear")
    assert ci.hi < 0 and ci.method == "t" and ci.text().startswith("-0.05")
    with pytest.raises(ValueError, match="positive"):
        difference_ci(lam_a, lam_b)  # log scale needs a loss
    neg_inf = difference_ci([-math.inf] + lam_a[1:], lam_b, scale="linear")
    assert neg_inf.method == "rank" and neg_inf.n == 5  # -inf (no stretching) ranks lowest


def test_rank_interval_matches_scipy_mann_whitney_p():
    from scipy.stats import mannwhitneyu

    a, b = [0.1, 0.3, 0.2, 0.5, 0.95], [0.6, 0.7, 0.8, 0.9, math.inf]  # B diverged once
    ci = difference_ci(a, b, paired=False, scale="linear")
    ref = mannwhitneyu(a, [0.6, 0.7, 0.8, 0.9, 99.0], method="exact").pvalue
    assert ci.method == "rank" and ci.p == pytest.approx(ref)  # 0.095: undecided
    clear = difference_ci([0.1, 0.3, 0.2, 0.5, 0.15], b, paired=False, scale="linear")
    assert clear.p == pytest.approx(2 / 252) and clear.hi < 0  # every A below every B


def test_signed_rank_interval_matches_scipy_wilcoxon_p():
    from scipy.stats import wilcoxon

    d = [0.3, -0.1, 0.5, 0.2, 0.45, math.inf]  # one diverged seed: the signed-rank path
    ci = one_sample_ci(d, 0.0, scale="linear")
    ref = wilcoxon([0.3, -0.1, 0.5, 0.2, 0.45, 99.0], method="exact").pvalue
    assert ci.method == "signed-rank" and ci.p == pytest.approx(ref)


def test_benjamini_hochberg_and_the_level_of_decided_intervals():
    decided, r = stats.benjamini_hochberg([0.001, 0.04, 0.03, 0.5, None])
    assert decided == [True, False, False, False, False] and r == 1
    decided, r = stats.benjamini_hochberg([0.01, 0.02, 0.03, 0.04])
    assert all(decided) and r == 4
    assert stats.adjusted_level(1, 5) == pytest.approx(0.99)
    assert stats.adjusted_level(0, 5) == pytest.approx(0.95)


def test_an_undecided_interval_at_its_level_contains_zero():
    """A comparison BH leaves undecided is shown at 1 - q (r + 1) / m; there it never excludes
    zero, though its 95% interval may (p = 0.02 in a family of 10 with one decided)."""
    rng = np.random.default_rng(3)
    for _ in range(200):
        m = int(rng.integers(2, 12))
        pairs = [(0.1 * np.exp(rng.normal(0, 1, 5)), 0.1 * np.exp(rng.normal(rng.normal(0, 1.5), 1, 5)))
                 for _ in range(m)]
        cis = [difference_ci(a, b) for a, b in pairs]
        decided, r = stats.benjamini_hochberg([c.p for c in cis])
        level = stats.undecided_level(r, m)
        for (a, b), d in zip(pairs, decided):
            if not d:
                assert not difference_ci(a, b, level=level).excludes_zero()


# Time to a target (time_to_target.py): a seed's first-passage time, read at the evaluations
# (every 50 steps) and censored at the cap (600), as the cpu study records it. Scenarios: the
# median early, mid-way, late (some seeds censored) and near the cap (about half censored).
EVERY, CAP = 50, 600
TTT_SCENARIOS = [(150, 0.5), (300, 1.0), (450, 0.5), (550, 0.7)]


def _passage(rng, median, sigma, n, seed_effect=1.0):
    """Steps at which each seed was first seen below the target (inf: censored at the cap)."""
    t = median * seed_effect * np.exp(sigma * rng.normal(size=n))
    seen = np.ceil(t / EVERY) * EVERY
    return [float(x) if x <= CAP else math.inf for x in seen]


def _km_coverage(n, median, sigma, draws, seed=0):
    """Share of draws whose Kaplan-Meier median interval holds the true median of the steps."""
    from rnn_spectra.study.time_to_target import kaplan_meier
    from rnn_spectra.study.time_to_target import median as km_median

    rng = np.random.default_rng(seed)
    true, hit = math.ceil(median / EVERY) * EVERY, 0
    for _ in range(draws):
        seen = _passage(rng, median, sigma, n)
        reached = [math.isfinite(x) for x in seen]
        _, lo, hi = km_median(kaplan_meier([int(x) if r else CAP for x, r in zip(seen, reached)],
                                           reached))
        hit += lo is not None and lo <= true and (hi is None or hi >= true)  # hi None: beyond
    return hit / draws


def _steps_null_rate(n, median, sigma, draws, seed=0):
    """Share of true nulls a steps-to-target comparison decides (paired by seed, censored seeds
    counted as the slowest: the rank method, as findings.py compares them)."""
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(draws):
        luck = np.exp(rng.normal(0.0, 0.5, n))  # a seed's luck moves both rows alike
        a, b = _passage(rng, median, sigma, n, luck), _passage(rng, median, sigma, n, luck)
        hits += difference_ci(a, b, paired=True).excludes_zero()
    return hits / draws


@pytest.mark.parametrize("median,sigma", TTT_SCENARIOS)
def test_time_to_target_median_interval_covers_and_its_comparison_is_calibrated(median, sigma):
    assert _km_coverage(10, median, sigma, draws=400) >= 0.93
    assert _steps_null_rate(10, median, sigma, draws=600) <= 0.06


def test_design_numbers():
    assert stats.expected_capture(200) == pytest.approx(0.834, abs=0.003)  # Cumming & Maillardet
    assert stats.expected_capture(5) == pytest.approx(0.879, abs=0.002)
    # 80% power at n = 5, paired: about 1.68 sd of the per-seed difference
    assert stats.detectable_shift(5) == pytest.approx(1.68, abs=0.01)


if __name__ == "__main__":  # the table the README quotes: python tests/test_calibration.py [DRAWS]
    import sys

    draws = int(sys.argv[1]) if len(sys.argv) > 1 else 4000
    print(f"share of 'decided' under a true null, {draws} draws per cell")
    print("| n | losses | paired t | Welch | percentile bootstrap (before) |")
    print("|---|---|---|---|---|")
    for n in (5, 3):
        for dist in ("normal", "lognormal", "heavy"):
            paired = _decided_rate(_null_pair(dist, n, True), lambda a, b: difference_ci(a, b), draws)
            welch = _decided_rate(_null_pair(dist, n, False),
                                  lambda a, b: difference_ci(a, b, paired=False), draws, seed=1)
            old = _decided_rate(_null_pair(dist, n, False), _percentile_bootstrap_diff, draws)
            print(f"| {n} | {dist} | {paired:.1%} | {welch:.1%} | {old:.1%} |")
    print(f"\ntime to a target at 10 seeds (evaluations every {EVERY} steps, cap {CAP}), {draws} draws")
    print("| median steps | sigma (log) | KM median interval covers | steps comparison decides a null |")
    print("|---|---|---|---|")
    for median, sigma in TTT_SCENARIOS:
        print(f"| {median} | {sigma} | {_km_coverage(10, median, sigma, draws):.1%} | "
              f"{_steps_null_rate(10, median, sigma, draws):.1%} |")
