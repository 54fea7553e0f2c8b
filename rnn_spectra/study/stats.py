"""The statistics a study's sentences rest on: one comparison function whose coverage is
checked by simulation at the seed counts a study uses (``tests/test_calibration.py``).

``difference_ci(a, b)`` compares two rows' per-seed outcomes, where ``math.inf`` marks a seed
that diverged (the worst outcome, never dropped):

- no seed diverged: a **t-interval** — of the mean per-seed difference when the seeds are
  paired (same seed: same data stream and test set), Welch's otherwise. On ``scale="log"``
  (losses) the values are logged first, so the estimate is a log ratio of geometric means and
  the text shows the ratio A/B. Losses are close to log-normal over seeds and a log ratio is
  what "2x lower" means; the t-interval is exact for log-normal losses and conservative for
  heavier tails.
- a seed diverged (or the differences have no spread, as counts can): the exact
  **Hodges–Lehmann interval** of the shift, inverted from the Mann–Whitney test, with diverged
  seeds ranked worst (Lachin's worst-rank analysis); a seed pair is not used here, so this is
  conservative when seeds are positively correlated. A row with more diverged seeds than the
  other is never called better: its interval is open on that side.

The share of seeds that diverged is a count, not a mean: ``share_difference`` decides with
Boschloo's exact test (``scipy.stats.boschloo_exact``) and shows Newcombe's hybrid score
interval. Each result carries a two-sided p-value, so a family of comparisons can be controlled
together (``benjamini_hochberg``); ``p <= alpha`` and "the level 1 - alpha interval excludes 0"
are the same statement for the t and rank intervals.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from scipy import optimize
from scipy import stats as sps

LEVEL = 0.95
FDR = 0.05  # Benjamini-Hochberg's q within each family of comparisons
UNDECIDED = "not distinguishable at this budget"
T, WELCH, RANK, SIGNED_RANK, EXACT = "t", "welch", "rank", "signed-rank", "boschloo"


@dataclasses.dataclass(frozen=True)
class Interval:
    """An estimate with its ``level`` interval [lo, hi] over ``n`` seeds (A's side; ``n_b`` for
    B's when unpaired) and the two-sided ``p`` of "no difference". ``scale="log"``: estimate
    and bounds are natural-log ratios, shown as the ratio A/B."""

    estimate: float
    lo: float
    hi: float
    n: int
    p: float | None = None
    method: str = ""
    scale: str = "linear"
    level: float = LEVEL
    n_b: int | None = None

    @classmethod
    def from_dict(cls, d: dict) -> Interval:
        names = {f.name for f in dataclasses.fields(cls)}
        # JSON keeps infinities and NaN as strings ("inf", "-inf", "nan"; workdir.write_json)
        numeric = {"estimate", "lo", "hi", "p"}
        return cls(**{k: float(v) if k in numeric and isinstance(v, str) else v
                      for k, v in d.items() if k in names})

    def excludes_zero(self) -> bool:
        return self.n > 1 and (self.lo > 0 or self.hi < 0)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def text(self, digits: int = 3, ratio: bool = True) -> str:
        """``ratio=False``: a log-scale value that is not a ratio (a geometric mean), no "×"."""
        if self.n == 0 or math.isnan(self.estimate):
            return "–"
        def show(x: float) -> str:
            if self.scale == "log":
                x = math.exp(x) if x < 700 else math.inf
            return ("∞" if x > 0 else "−∞") if math.isinf(x) else f"{x:.{digits}g}"

        prefix = "×" if self.scale == "log" and ratio else ""
        if self.n == 1 and self.n_b in (None, 1):
            return f"{prefix}{show(self.estimate)} (1 seed, no CI)"
        return f"{prefix}{show(self.estimate)} [{show(self.lo)}, {show(self.hi)}]"


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _values(values: Sequence, scale: str) -> np.ndarray:
    """The non-missing values as floats, logged on the log scale (inf stays inf)."""
    x = np.asarray([v for v in values if not _missing(v)], dtype=np.float64)
    if scale == "log":
        if np.any(x <= 0):
            raise ValueError("scale='log' needs positive values (a loss); use scale='linear'")
        with np.errstate(divide="ignore"):
            x = np.log(x)
    return x


def _undecided(est: float, n: int, method: str, scale: str, level: float, n_b=None) -> Interval:
    return Interval(est, -math.inf, math.inf, n, 1.0, method, scale, level, n_b)


# ----------------------------------------------------------------------------- t intervals


def _t_one_sample(d: np.ndarray, level: float, scale: str, method: str = T) -> Interval:
    r = sps.ttest_1samp(d, 0.0)
    ci = r.confidence_interval(level)
    return Interval(float(d.mean()), float(ci.low), float(ci.high), int(d.size), float(r.pvalue),
                    method, scale, level)


def _welch(x: np.ndarray, y: np.ndarray, level: float, scale: str) -> Interval:
    r = sps.ttest_ind(x, y, equal_var=False)
    ci = r.confidence_interval(level)
    return Interval(float(x.mean() - y.mean()), float(ci.low), float(ci.high), int(x.size),
                    float(r.pvalue), WELCH, scale, level, int(y.size))


# ----------------------------------------------------------------------------- rank intervals


@lru_cache(maxsize=None)
def _mann_whitney_cdf(m: int, n: int) -> np.ndarray:
    """P(U <= u), u = 0 .. m n, under the null (no ties): the Gaussian binomial coefficient's
    coefficients, by the recursion c(u; m, n) = c(u - n; m - 1, n) + c(u; m, n - 1)."""
    table = {(0, j): np.ones(1) for j in range(n + 1)}
    table.update({(i, 0): np.ones(1) for i in range(m + 1)})
    for i in range(1, m + 1):
        for j in range(1, n + 1):
            c = np.zeros(i * j + 1)
            c[j:j + table[(i - 1, j)].size] += table[(i - 1, j)]
            c[:table[(i, j - 1)].size] += table[(i, j - 1)]
            table[(i, j)] = c
    counts = table[(m, n)]
    return np.cumsum(counts) / counts.sum()


@lru_cache(maxsize=None)
def _signed_rank_cdf(n: int) -> np.ndarray:
    """P(T+ <= t), t = 0 .. n(n+1)/2, under the null: coefficients of prod_i (1 + q^i)."""
    c = np.ones(1)
    for i in range(1, n + 1):
        c = np.concatenate([c, np.zeros(i)]) + np.concatenate([np.zeros(i), c])
    return np.cumsum(c) / c.sum()


def _sub(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """x - y elementwise, where two equal infinities are a tie (0), not NaN."""
    with np.errstate(invalid="ignore"):
        d = x - y
    return np.where(np.isnan(d), 0.0, d)


def _order_interval(diffs: np.ndarray, cdf: np.ndarray, level: float) -> tuple[float, float, float, float]:
    """Estimate (median), bounds (order statistics) and p of a rank interval over ``diffs``
    (pairwise differences or Walsh averages) whose null count distribution is ``cdf``."""
    d = np.sort(diffs)
    est = float(np.median(d))
    alpha = 1.0 - level
    ok = np.nonzero(cdf <= alpha / 2)[0]  # u with P(U <= u) <= alpha/2
    if ok.size == 0:
        lo, hi = -math.inf, math.inf  # too few seeds for any interval at this level
    else:
        k = int(ok[-1]) + 1  # 1-based order statistic
        lo, hi = float(d[k - 1]), float(d[d.size - k])
    against = min(int(np.sum(d <= 0)), int(np.sum(d >= 0)))  # ties count against deciding
    p = min(1.0, 2.0 * float(cdf[against])) if against < cdf.size else 1.0
    return est, lo, hi, p


def _rank_two_sample(x: np.ndarray, y: np.ndarray, level: float, scale: str) -> Interval:
    diffs = _sub(x[:, None], y[None, :]).ravel()
    est, lo, hi, p = _order_interval(diffs, _mann_whitney_cdf(x.size, y.size), level)
    return Interval(est, lo, hi, int(x.size), p, RANK, scale, level, int(y.size))


def _rank_one_sample(d: np.ndarray, level: float, scale: str) -> Interval:
    i, j = np.triu_indices(d.size)
    with np.errstate(invalid="ignore"):
        walsh = (d[i] + d[j]) / 2.0
    walsh = np.where(np.isnan(walsh), 0.0, walsh)
    est, lo, hi, p = _order_interval(walsh, _signed_rank_cdf(d.size), level)
    return Interval(est, lo, hi, int(d.size), p, SIGNED_RANK, scale, level)


# ----------------------------------------------------------------------------- the comparisons


def _worse_never_better(ci: Interval, diverged_a: int, diverged_b: int) -> Interval:
    """A side with more diverged seeds is never called better: its interval is open there (and
    a decision that it is better becomes none)."""
    if diverged_a > diverged_b:
        return dataclasses.replace(ci, hi=math.inf, p=1.0 if ci.hi < 0 else ci.p)
    if diverged_b > diverged_a:
        return dataclasses.replace(ci, lo=-math.inf, p=1.0 if ci.lo > 0 else ci.p)
    return ci


def difference_ci(a: Sequence[float], b: Sequence[float], *, paired: bool = True,
                  level: float = LEVEL, scale: str = "log") -> Interval:
    """A vs B over seeds: the log ratio (``scale="log"``) or the difference of A - B with its
    ``level`` interval and two-sided p. ``math.inf`` = a diverged seed (worst), None/NaN = no
    outcome (left out). ``paired``: a[i] and b[i] share seed i (equal lengths)."""
    if paired and len(a) != len(b):
        raise ValueError(f"paired samples must have equal length, got {len(a)} and {len(b)}")
    if paired:
        keep = [(x, y) for x, y in zip(a, b) if not _missing(x) and not _missing(y)]
        a, b = [x for x, _ in keep], [y for _, y in keep]
    x, y = _values(a, scale), _values(b, scale)
    div_a, div_b = int(np.sum(x == math.inf)), int(np.sum(y == math.inf))
    if x.size == 0 or y.size == 0:
        return Interval(math.nan, math.nan, math.nan, 0, None, "", scale, level)
    finite = np.all(np.isfinite(x)) and np.all(np.isfinite(y))
    if paired and finite:
        d = x - y
        if d.size < 2:
            return _undecided(float(d.mean()), int(d.size), T, scale, level)
        ci = _t_one_sample(d, level, scale) if d.std() > 0 else _rank_two_sample(x, y, level, scale)
    elif finite and x.size >= 2 and y.size >= 2 and (x.std() > 0 or y.std() > 0):
        ci = _welch(x, y, level, scale)
    elif min(x.size, y.size) < 2 and finite:
        return _undecided(float(x.mean() - y.mean()), int(x.size), WELCH, scale, level, int(y.size))
    else:
        ci = _rank_two_sample(x, y, level, scale)
    return _worse_never_better(ci, div_a, div_b)


def one_sample_ci(values: Sequence[float], reference: Sequence[float] | float = 0.0, *,
                  level: float = LEVEL, scale: str = "log") -> Interval:
    """``values`` against a known ``reference`` (a number, or one per value: each seed's own
    baseline): the log ratio or difference with a t-interval, or the signed-rank interval where
    a value is infinite (a diverged seed: the row can then never be called lower)."""
    refs = list(reference) if np.ndim(reference) else [reference] * len(values)
    pairs = [(v, r) for v, r in zip(values, refs) if not _missing(v)]
    x = _values([v for v, _ in pairs], scale)
    r = _values([r for _, r in pairs], scale)
    d = _sub(x, r)
    if d.size == 0:
        return Interval(math.nan, math.nan, math.nan, 0, None, "", scale, level)
    if d.size < 2:
        return _undecided(float(d[0]), 1, T, scale, level)
    if np.all(np.isfinite(d)) and d.std() > 0:
        ci = _t_one_sample(d, level, scale)
    else:
        ci = _rank_one_sample(d, level, scale)
    return _worse_never_better(ci, int(np.sum(x == math.inf)), 0)


def mean_ci(values: Sequence[float], *, level: float = LEVEL, scale: str = "log") -> Interval:
    """The (geometric, on the log scale) mean of the finite values with its t-interval: a row's
    own summary, over the seeds that did not diverge (the diverged are counted beside it)."""
    x = _values(values, scale)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return Interval(math.nan, math.nan, math.nan, 0, None, "", scale, level)
    if x.size == 1 or x.std() == 0:
        return Interval(float(x.mean()), float(x.mean()), float(x.mean()), int(x.size), None, T,
                        scale, level)
    ci = _t_one_sample(x, level, scale)
    return dataclasses.replace(ci, p=None)


def _wilson(k: int, n: int, z: float) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def share_difference(k_a: int, n_a: int, k_b: int, n_b: int, *, level: float = LEVEL) -> Interval:
    """Share of seeds with an event (diverged), A - B: Newcombe's hybrid score interval (from
    two Wilson intervals) and Boschloo's exact two-sided p, which decides."""
    if n_a == 0 or n_b == 0:
        return Interval(math.nan, math.nan, math.nan, 0, None, EXACT, "linear", level)
    pa, pb = k_a / n_a, k_b / n_b
    z = float(sps.norm.ppf(0.5 + level / 2))
    la, ua = _wilson(k_a, n_a, z)
    lb, ub = _wilson(k_b, n_b, z)
    est = pa - pb
    lo = est - math.sqrt((pa - la) ** 2 + (ub - pb) ** 2)
    hi = est + math.sqrt((ua - pa) ** 2 + (pb - lb) ** 2)
    return Interval(est, lo, hi, n_a, _boschloo(k_a, n_a, k_b, n_b), EXACT, "linear", level, n_b)


@lru_cache(maxsize=4096)
def _boschloo(k_a: int, n_a: int, k_b: int, n_b: int) -> float:
    if k_a * n_b == k_b * n_a:
        return 1.0  # equal shares
    table = [[k_a, k_b], [n_a - k_a, n_b - k_b]]  # columns: the two rows' seeds
    return min(1.0, float(sps.boschloo_exact(table, alternative="two-sided").pvalue))


# ----------------------------------------------------------------------------- families


def benjamini_hochberg(pvalues: Sequence[float | None], q: float = FDR) -> tuple[list[bool], int]:
    """Which of a family's comparisons are decided at false discovery rate ``q``, and how many
    (R). None (no test) is never decided."""
    ps = [(p if p is not None and not math.isnan(p) else 1.0) for p in pvalues]
    if not ps:
        return [], 0
    decided = [bool(a <= q) for a in sps.false_discovery_control(ps, method="bh")]
    return decided, sum(decided)


def adjusted_level(r: int, m: int, q: float = FDR) -> float:
    """The level of the intervals shown for the ``r`` decided comparisons of a family of ``m``
    (Benjamini & Yekutieli 2005: false coverage rate <= q)."""
    return 1.0 - (r * q / m if r else q)


def undecided_level(r: int, m: int, q: float = FDR) -> float:
    """The level of the intervals shown for the comparisons a family of ``m`` left undecided when
    it decided ``r``: Benjamini–Hochberg leaves a comparison undecided only if its p exceeds
    ``q (r + 1) / m``, so at this level its interval contains zero (for the t and rank
    intervals, whose p and interval are dual) and never reads as a finding it is not."""
    return 1.0 - min(1.0, q * (r + 1) / m)


# ----------------------------------------------------------------------------- design numbers


def expected_capture(n: int, level: float = LEVEL) -> float:
    """The chance that a replication's estimate falls inside a t-interval at ``level`` over
    ``n`` seeds, both runs with n seeds (Cumming & Maillardet 2006: 83% for large n at 95%)."""
    if n < 2:
        return math.nan
    crit = float(sps.t.ppf(0.5 + level / 2, n - 1))
    return float(2 * sps.t.cdf(crit / math.sqrt(2), n - 1) - 1)


def detectable_shift(n: int, *, level: float = LEVEL, power: float = 0.8) -> float:
    """The smallest mean difference, in units of the per-seed difference's sd, that a paired
    t-test over ``n`` seeds detects with ``power`` (two-sided, 1 - level)."""
    crit = float(sps.t.ppf(0.5 + level / 2, n - 1))

    def miss(delta):
        nc = delta * math.sqrt(n)
        got = float(sps.nct.sf(crit, n - 1, nc) + sps.nct.cdf(-crit, n - 1, nc))
        return (1.0 if math.isnan(got) else got) - power  # NaN: far in the tail, power ~ 1

    return float(optimize.brentq(miss, 1e-6, 50.0))


def sample_sd(values: Sequence[float]) -> float | None:
    """The sample standard deviation (ddof=1: with few seeds the population sd understates the
    spread) of the finite values; None for fewer than two."""
    x = np.asarray([v for v in values if not _missing(v)], dtype=np.float64)
    x = x[np.isfinite(x)]
    return float(np.std(x, ddof=1)) if x.size >= 2 else None
