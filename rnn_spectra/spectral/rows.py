"""Read the quantities a report quotes out of spectra.jsonl rows (see ``monitor.py`` for keys)."""

from __future__ import annotations

import math


def sigma_max(row: dict) -> float | None:
    """Largest singular value over the cell's recurrent matrices (all gates for LSTM/GRU: not the
    quantity of Pascanu's bound there, see ``step_norm``)."""
    tops = [v[0] for k, v in row.items() if (k.startswith("sv/") or k.startswith("sv_top/")) and v]
    return max(tops) if tops else None


def sigma_max_by_matrix(row: dict) -> dict[str, float]:
    return {k.split("/", 1)[1]: v[0] for k, v in row.items()
            if (k.startswith("sv/") or k.startswith("sv_top/")) and v}


def lyapunov_top(row: dict) -> float | None:
    """Top Lyapunov exponent (nats per step), mean over the probe sequences."""
    lam = row.get("lyapunov/mean")
    return _finite(lam[0]) if lam else None


def lyapunov_top_window(row: dict) -> float | None:
    """Top Lyapunov exponent on the Lyapunov regulariser's window where it is not the monitor's
    (``lyapunov_window/mean``, mean over the probes); None where the row has none."""
    lam = row.get("lyapunov_window/mean")
    return _finite(lam[0]) if lam else None


def lag_slope(row: dict) -> float | None:
    """The gradient norm's slope against the lag: the least-squares slope of
    ``ln ||ds_T/ds_{T-k}||_2`` (mean over the probes) on k over the recorded lags, nats per step;
    on long lags it tends to lambda_1, on short ones it carries the transient that lambda_1's
    burn-in leaves out. -inf where a product is exactly zero (the gradient vanishes at that lag
    and beyond), None with fewer than two lags."""
    lags, vals = jacobian_by_lag(row)
    pts = [(k, v) for k, v in zip(lags, vals) if v is not None]
    if any(v == -math.inf for _, v in pts):
        return -math.inf
    pts = [(k, v) for k, v in pts if math.isfinite(v)]
    if len(pts) < 2:
        return None
    mk = sum(k for k, _ in pts) / len(pts)
    mv = sum(v for _, v in pts) / len(pts)
    sxx = sum((k - mk) ** 2 for k, _ in pts)
    return sum((k - mk) * (v - mv) for k, v in pts) / sxx if sxx > 0 else None


def step_norm(row: dict) -> float | None:
    """Time-averaged ``||ds_{t+1}/ds_t||_2`` on the probe trajectories (every cell, gates included)."""
    return _finite(row.get("step_norm/mean"))


def near_zero(row: dict) -> float | None:
    """Mean count of Lyapunov exponents within ``lyapunov/near_zero_tol`` of zero."""
    return _finite(row.get("lyapunov/near_zero/mean"))


def kaplan_yorke(row: dict) -> float | None:
    return _finite(row.get("lyapunov/kaplan_yorke/mean"))


def dead_units(row: dict) -> float | None:
    """Fraction of state components with a zero Jacobian row over the measurement window."""
    return _finite(row.get("dead_units/mean"))


# Per seed, from a run's first (init) and last spectra row: what a report table quotes.
QUANTITIES = {"step_norm": step_norm, "near_zero": near_zero, "kaplan_yorke": kaplan_yorke,
              "dead_units": dead_units}


def init_end_summary(spectra: list[list[dict]]) -> dict:
    """``{"<q>_init", "<q>_end"}`` means over seeds (finite values) of each of ``QUANTITIES``,
    ``sigma_by_matrix_init/_end`` ({matrix: mean top singular value}: per gate for LSTM/GRU) and
    ``lyapunov_top_neginf_init/_end``: how many seeds have lambda_1 = -inf (a mean over seeds
    leaves them out, so a table says so); ``lyapunov_discard``: the burn-in steps."""
    out: dict = {}
    for when, idx in (("init", 0), ("end", -1)):
        rows = [s[idx] for s in spectra if s]
        for name, fn in QUANTITIES.items():
            vals = [v for v in (fn(r) for r in rows) if v is not None and math.isfinite(v)]
            out[f"{name}_{when}"] = sum(vals) / len(vals) if vals else None
        by = [sigma_max_by_matrix(r) for r in rows]
        out[f"sigma_by_matrix_{when}"] = {m: sum(b[m] for b in by) / len(by) for m in (by[0] if by else {})
                                          if all(m in b for b in by)}
        out[f"lyapunov_top_neginf_{when}"] = sum(lyapunov_top(r) == -math.inf for r in rows)
    # The burn-in (steps) the exponents skipped, as the last row recorded it (None: before #14).
    last = [s[-1] for s in spectra if s]
    out["lyapunov_discard"] = last[0].get("lyapunov/discard") if last else None
    return out


def jacobian_by_lag(row: dict) -> tuple[list[int], list[float]]:
    """(lags k, mean ln ||ds_T/ds_{T-k}||_2)."""
    return row.get("lags", []), [_finite(v) for v in row.get("jac_log_norm/mean", [])]


def gradient_flow(row: dict) -> tuple[list[int], list[float]]:
    """(1-based steps t, ln ||dL/dS_t||)."""
    return row.get("grad_flow/t", []), [_finite(v) for v in row.get("grad_flow/log_norm", [])]


def _finite(v) -> float | None:
    """A float (±inf kept: a fully vanished product is a result), None for NaN or missing.

    Non-finite floats are stored as strings ("nan", "-inf") by the workdir writers."""
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v
