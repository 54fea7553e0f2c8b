"""Time to a target: how many steps (and seconds of one model) each confirmed row takes until
its validation loss first falls below a fraction of the trivial baseline.

Per seed: the step of the first evaluation below ``fraction x baseline``. A seed that never gets
there is *censored*, never dropped: at its last evaluation (the step cap), and a seed that
diverged at the step cap too, since a diverged run stops for good and would never reach the
target (censoring it at its divergence would count it as a run that might still get there).
Over a row's seeds, the Kaplan–Meier estimate of P(reached by step s) with its pointwise band
(``scipy.stats.ecdf`` on ``CensoredData``, log-log Greenwood interval), and the median time to
target read from it: None when fewer than half the seeds reach the target, however many do.

Steps are counted at the evaluations (every ``train.eval_every`` steps), so a time is the first
evaluation at or past the true crossing. Seconds are those steps times one model's measured
seconds per training step alone on one device (``timing.py``), never a vmapped group's clock.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import stats as sps

from rnn_spectra.study.stats import LEVEL

DEFAULT_FRACTIONS = (0.5, 0.1)


def fractions(preset_fields: dict) -> tuple[float, ...]:
    """The targets of a study, as fractions of the baseline; a study.json from before there were
    two names its one ``target_fraction``."""
    if preset_fields.get("target_fractions"):
        return tuple(float(f) for f in preset_fields["target_fractions"])
    if "target_fraction" in preset_fields:
        return (float(preset_fields["target_fraction"]),)
    return DEFAULT_FRACTIONS


def first_reached(eval_rows: list[dict], target: float, censor_at: int) -> tuple[int, bool]:
    """(step, reached): the first evaluation whose loss is below ``target``, or ``censor_at``
    (not reached). NaN and infinite losses never reach it."""
    for r in eval_rows:
        loss = r.get("loss")
        if isinstance(loss, (int, float)) and math.isfinite(loss) and loss < target:
            return int(r["step"]), True
    return int(censor_at), False


def kaplan_meier(times: list[int], reached: list[bool], level: float = LEVEL) -> dict:
    """P(reached by step s) over seeds: ``steps`` (where it changes), ``fraction`` and its
    pointwise ``level`` band ``lo``/``hi``, all of equal length, right-continuous.

    Where the Greenwood variance is zero (no seed at risk has reached yet, or every one has) the
    log-log interval is undefined; there the band is Clopper–Pearson's exact one for 0 (or all)
    of the seeds not censored before that step, so a row where every seed reached still shows how
    sure that is."""
    data = sps.CensoredData(uncensored=[t for t, r in zip(times, reached) if r],
                            right=[t for t, r in zip(times, reached) if not r])
    cdf = sps.ecdf(data).cdf
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "undefined at some observations"
        band = cdf.confidence_interval(level, method="log-log")
    steps = cdf.quantiles.astype(float)
    frac = cdf.probabilities.astype(float)
    lo, hi = band.low.probabilities.astype(float), band.high.probabilities.astype(float)
    alpha = 1.0 - level
    for i, s in enumerate(steps):
        if np.isfinite(lo[i]) and np.isfinite(hi[i]):
            continue
        n = sum(1 for t, r in zip(times, reached) if r or t >= s)  # not censored before s
        exact = (alpha / 2) ** (1.0 / n)
        lo[i], hi[i] = (exact, 1.0) if frac[i] >= 1.0 else (0.0, 1.0 - exact)
    return {"steps": steps.tolist(), "fraction": frac.tolist(), "lo": lo.tolist(),
            "hi": hi.tolist(), "level": level}


def _first_at_least(steps: list[float], values: list[float], p: float) -> float | None:
    return next((s for s, v in zip(steps, values) if v >= p - 1e-12), None)


def median(km: dict) -> tuple[float | None, float | None, float | None]:
    """(median, lo, hi): the first step where the estimate reaches 50%, with the interval
    inverted from the band (where its upper and its lower edge reach 50%); None where it does
    not (the median: not reached; hi: beyond the last evaluation)."""
    return (_first_at_least(km["steps"], km["fraction"], 0.5),
            _first_at_least(km["steps"], km["hi"], 0.5),
            _first_at_least(km["steps"], km["lo"], 0.5))


def row_times(seeds: list[dict], eval_rows, baseline: float, cap: int | None,
              fracs: tuple[float, ...], seconds_per_step: float | None) -> list[dict]:
    """Per target: each seed's steps (None: not reached, with the step it was censored at), the
    Kaplan–Meier curve and its median in steps and seconds. ``seeds``: a row's members (each with
    ``seed``, ``summary``, ``metrics``); ``eval_rows(m)``: a member's validation rows."""
    def sec(steps):
        return None if steps is None or seconds_per_step is None else steps * seconds_per_step

    # the step cap: study.json's, else the members' own (summary.json), else the last evaluation
    cap = int(cap or max([int(m["summary"].get("target_steps") or 0) for m in seeds]
                         + [int(r["step"]) for m in seeds for r in eval_rows(m)] + [0]))
    out = []
    for f in fracs:
        steps_by_seed, censored_at = {}, {}
        times, reached = [], []
        for m in seeds:
            rows = eval_rows(m)
            last = max([int(r["step"]) for r in rows], default=0)
            diverged = m["summary"].get("status") == "diverged"
            end = max(last, cap) if diverged else last
            step, ok = first_reached(rows, f * baseline, end)
            steps_by_seed[str(m["seed"])] = step if ok else None
            if not ok:
                censored_at[str(m["seed"])] = step
            times.append(step)
            reached.append(ok)
        km = kaplan_meier(times, reached)
        med, lo, hi = median(km)
        out.append({"fraction": f, "target_loss": f * baseline, "seeds": len(seeds),
                    "reached": sum(reached), "steps_by_seed": steps_by_seed,
                    "censored_at_by_seed": censored_at, "last_step": cap, "km": km,
                    "median_steps": med,
                    "median_steps_ci": [lo, hi], "seconds_per_step": seconds_per_step,
                    "median_seconds": sec(med), "median_seconds_ci": [sec(lo), sec(hi)]})
    return out


def outcomes(t: dict) -> dict[str, float]:
    """Seed -> steps to the target, ``inf`` where it was not reached (censored: the worst
    outcome, as a diverged seed's loss is in the loss comparisons)."""
    return {s: math.inf if v is None else float(v) for s, v in t["steps_by_seed"].items()}


def cell_text(t: dict | None) -> str:
    """A report table's cell: 'median [CI]; reached/seeds reached' (steps)."""
    if t is None:
        return "–"
    med, (lo, hi) = t["median_steps"], t["median_steps_ci"]
    counted = f"{t['reached']}/{t['seeds']} reached"
    if med is None:
        return f"not reached; {counted}"
    hi_text = f"{hi:g}" if hi is not None else f">{t['last_step']:g}"
    lo_text = f"{lo:g}" if lo is not None else "?"
    return f"{med:g} [{lo_text}, {hi_text}]; {counted}"


def seconds_text(times: list[dict]) -> str:
    """A report table's cell: the median seconds to each target, one model alone ('–': the
    median was not reached or the model not timed)."""
    return " / ".join("–" if t.get("median_seconds") is None else f"{t['median_seconds']:.3g}"
                      for t in times) or "–"
