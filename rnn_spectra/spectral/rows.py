"""Read the quantities a report quotes out of spectra.jsonl rows (see ``monitor.py`` for keys)."""

from __future__ import annotations

import math


def sigma_max(row: dict) -> float | None:
    """Largest singular value over the cell's recurrent matrices (all gates for LSTM/GRU)."""
    tops = [v[0] for k, v in row.items() if (k.startswith("sv/") or k.startswith("sv_top/")) and v]
    return max(tops) if tops else None


def sigma_max_by_matrix(row: dict) -> dict[str, float]:
    return {k.split("/", 1)[1]: v[0] for k, v in row.items()
            if (k.startswith("sv/") or k.startswith("sv_top/")) and v}


def lyapunov_top(row: dict) -> float | None:
    """Top Lyapunov exponent (nats per step), mean over the probe sequences."""
    lam = row.get("lyapunov/mean")
    return _finite(lam[0]) if lam else None


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
