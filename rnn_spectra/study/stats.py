"""The statistics a study's sentences rest on: bootstrap confidence intervals of means and of
differences, and the verdict a difference earns.

Percentile bootstrap over seeds (the unit of replication): resample the seeds with replacement,
take the statistic, read the 2.5% and 97.5% quantiles. With few seeds the interval is wide,
which is the point: a comparison is stated only when its interval excludes zero.
Everything is numpy and seeded, so a report is reproducible to the digit.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

LEVEL = 0.95
N_BOOT = 10_000
UNDECIDED = "not distinguishable at this budget"


@dataclasses.dataclass(frozen=True)
class Interval:
    """A point estimate with its ``level`` confidence interval [lo, hi] over ``n`` seeds."""

    estimate: float
    lo: float
    hi: float
    n: int

    def excludes_zero(self) -> bool:
        return self.n > 1 and (self.lo > 0 or self.hi < 0)

    def as_dict(self) -> dict:
        return {"estimate": self.estimate, "lo": self.lo, "hi": self.hi, "n": self.n}

    def text(self, digits: int = 3) -> str:
        if self.n == 0 or not math.isfinite(self.estimate):
            return "–"
        if self.n == 1:
            return f"{self.estimate:.{digits}g} (1 seed, no CI)"
        return f"{self.estimate:.{digits}g} [{self.lo:.{digits}g}, {self.hi:.{digits}g}]"


def _finite(values: Sequence[float]) -> np.ndarray:
    x = np.asarray([v for v in values if v is not None], dtype=np.float64)
    return x[np.isfinite(x)]


def sample_sd(values: Sequence[float]) -> float | None:
    """The sample standard deviation (ddof=1: with few seeds the population sd understates the
    spread); None for fewer than two finite values."""
    x = _finite(values)
    return float(np.std(x, ddof=1)) if x.size >= 2 else None


def _quantiles(stats: np.ndarray, level: float) -> tuple[float, float]:
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(stats, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def mean_ci(values: Sequence[float], *, level: float = LEVEL, n_boot: int = N_BOOT,
            seed: int = 0) -> Interval:
    """Mean of the finite ``values`` with a percentile-bootstrap CI (resampling the values)."""
    x = _finite(values)
    if x.size == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    if x.size == 1:
        return Interval(float(x[0]), float(x[0]), float(x[0]), 1)
    rng = np.random.default_rng(seed)
    boot = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    return Interval(float(x.mean()), *_quantiles(boot, level), int(x.size))


def diff_ci(a: Sequence[float], b: Sequence[float], *, paired: bool = False, level: float = LEVEL,
            n_boot: int = N_BOOT, seed: int = 0) -> Interval:
    """mean(a) - mean(b) with a bootstrap CI.

    ``paired``: a[i] and b[i] share seed i (same init draw, same data stream), so the seed's own
    luck cancels: resample the pairs' differences. Unpaired: resample each side on its own.
    Non-finite values are dropped (pairs with either side non-finite, when paired)."""
    if paired:
        if len(a) != len(b):
            raise ValueError(f"paired samples must have equal length, got {len(a)} and {len(b)}")
        pairs = [(x, y) for x, y in zip(a, b) if x is not None and y is not None
                 and math.isfinite(x) and math.isfinite(y)]
        return mean_ci([x - y for x, y in pairs], level=level, n_boot=n_boot, seed=seed)
    xa, xb = _finite(a), _finite(b)
    if xa.size == 0 or xb.size == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    est = float(xa.mean() - xb.mean())
    n = int(min(xa.size, xb.size))
    if n < 2:
        return Interval(est, est, est, 1)
    rng = np.random.default_rng(seed)
    ba = xa[rng.integers(0, xa.size, size=(n_boot, xa.size))].mean(axis=1)
    bb = xb[rng.integers(0, xb.size, size=(n_boot, xb.size))].mean(axis=1)
    return Interval(est, *_quantiles(ba - bb, level), n)


def verdict(ci: Interval, *, lower: str, higher: str) -> str:
    """``lower`` when the whole CI of (A - B) is below zero, ``higher`` when above, else
    ``UNDECIDED``: the words a finding may use."""
    if not ci.excludes_zero():
        return UNDECIDED
    return lower if ci.hi < 0 else higher
