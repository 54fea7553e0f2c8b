"""Optional views of a run's rows: the one small interface TensorBoard and W&B write through.

metrics.jsonl and spectra.jsonl stay the record. A ``RowLogger`` turns each row into named
scalars and histograms at the row's step (``metric_scalars``, ``spectra_values``: the same tags
for every backend) and hands them to its backend's ``write``; a ``Fanout`` writes to several.
Which backends a run turns on, and opening them, is ``log_backends.py``'s: the backends import
this interface, and this module imports none of them.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Iterable, Mapping

import numpy as np

from rnn_spectra.errors import ConfigError

NOT_METRICS = frozenset({"step", "split", "wall_time"})
# spectra.jsonl means logged as scalars "spectral/<key without /mean>" (monitor.py defines them).
SUMMARY_KEYS = ("step_norm/mean", "lyapunov/near_zero/mean", "lyapunov/kaplan_yorke/mean",
                "dead_units/mean", "zero_steps/mean")


def import_backend(module: str, hint: str):
    """The backend's module, or a one-line ConfigError with the install ``hint``."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        if e.name == module:
            raise ConfigError(hint) from None
        raise ConfigError(f"{module} is installed but fails to import ({e}); {hint}") from None


def finite(value) -> float | None:
    """``value`` as a float if it is a finite real number; None for None, bools, strings
    ("-inf", "nan": how some rows spell non-finite values), lists and non-finite numbers."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _seq(values) -> list:
    """A row's list (or 1-D array) as a list; [] for a missing key or anything else."""
    if isinstance(values, np.ndarray):
        return values.reshape(-1).tolist()
    return list(values) if isinstance(values, (list, tuple)) else []


def _finite_array(values) -> np.ndarray:
    """The finite entries of a list that may hold None, strings or non-finite floats."""
    return np.asarray([v for v in map(finite, _seq(values)) if v is not None], dtype=np.float64)


def _put(out: dict, tag: str, value) -> None:
    value = finite(value)
    if value is not None:
        out[tag] = value


def metric_scalars(row: Mapping) -> tuple[int | None, dict[str, float]]:
    """(step, ``{"<split>/<key>": value}``) of one metrics row: every finite number but
    step/wall_time; step None for a row without a usable step (nothing to log)."""
    if finite(row.get("step")) is None:
        return None, {}
    split, out = row.get("split"), {}
    for key, value in row.items():
        if key not in NOT_METRICS:
            _put(out, f"{split}/{key}" if split else str(key), value)
    return int(row["step"]), out


def spectra_values(row: Mapping) -> tuple[int | None, dict[str, float], dict[str, np.ndarray]]:
    """(step, scalars ``spectral/...``, singular-value histograms ``spectral/singular_values/<m>``)
    of one spectra.jsonl row. Non-finite values are left out, unknown keys ignored."""
    if finite(row.get("step")) is None:
        return None, {}, {}
    scalars, hists = {}, {}
    matrices = {k.split("/", 1)[1] for k in row if k.startswith(("sv/", "sv_top/", "sv_bottom/"))}
    for m in sorted(matrices):
        # All singular values, or for H > FULL_SV_MAX only the recorded extremes.
        full = _seq(row.get(f"sv/{m}"))
        top = full or _seq(row.get(f"sv_top/{m}"))
        if top:
            _put(scalars, f"spectral/sigma_max/{m}", top[0])  # descending: first = max
        values = _finite_array(full or top + _seq(row.get(f"sv_bottom/{m}")))
        if values.size:
            hists[f"spectral/singular_values/{m}"] = values
    for key, value in row.items():
        if key.startswith("spectral_radius/"):
            _put(scalars, f"spectral/{key}", value)
    for i, value in enumerate(_seq(row.get("lyapunov/mean")), start=1):
        _put(scalars, f"spectral/lyapunov/{i}", value)
    for lag, value in zip(_seq(row.get("lags")), _seq(row.get("jac_log_norm/mean"))):
        _put(scalars, f"spectral/jac_log_norm/lag_{int(lag):03d}", value)  # sorts by lag
    _put(scalars, "spectral/probe_loss", row.get("probe_loss"))
    for key in SUMMARY_KEYS:  # rows from before issue #14 lack them: nothing logged
        if key in row:
            _put(scalars, f"spectral/{key[:-5]}", row[key])
    return int(row["step"]), scalars, hists


class RowLogger:
    """Metrics and spectra rows as a backend's scalars and histograms. A backend implements
    ``write(step, scalars, histograms)`` and ``close()``; use as a context manager."""

    def write(self, step: int, scalars: Mapping[str, float], histograms: Mapping[str, np.ndarray]) -> None:
        raise NotImplementedError

    def log_metrics(self, rows: Iterable[Mapping] | Mapping) -> None:
        for row in [rows] if isinstance(rows, Mapping) else rows:
            step, scalars = metric_scalars(row)
            if step is not None and scalars:
                self.write(step, scalars, {})

    def log_spectra(self, row: Mapping) -> None:
        step, scalars, hists = spectra_values(row)
        if step is not None and (scalars or hists):
            self.write(step, scalars, hists)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Fanout(RowLogger):
    """One member's loggers, one per backend, written together."""

    def __init__(self, loggers: list[RowLogger]):
        self.loggers = loggers

    def write(self, step, scalars, histograms) -> None:
        for logger in self.loggers:
            logger.write(step, scalars, histograms)

    def close(self) -> None:
        """Close every backend, even when one fails (the first failure is raised after)."""
        error = None
        for logger in self.loggers:
            try:
                logger.close()
            except Exception as e:  # noqa: BLE001 - the others must still close
                error = error or e
        if error is not None:
            raise error
