"""Does a spectrum measured early predict how a member ends? (issue #15, the observational half)

For every member of a study table, each of ``QUANTITIES`` is read from its spectra row at
initialisation (``when="init"``: ``spectra[0]``, step 0) and at the first spectral measurement
after it (``when="first"``: ``spectra[1]``), and set against the member's outcome:

- Spearman's rho of the quantity with the test loss relative to the table's baseline
  (``test loss / baseline``; 1 = the memoryless predictor). Diverged members have no meaningful
  test loss and are left out of it (counted in ``diverged_skipped``).
- The AUC of the raw quantity as a score for "beats the baseline" (test loss < baseline). Here a
  diverged member is a negative: it did not beat the baseline. AUC > 0.5: higher values go with
  success, AUC < 0.5: lower values do; 0.5: no separation.

Per table only: losses of different tasks are not on one scale, so no pooled row. A table mixes
every variant, setting and seed of the grid, so a correlation here is observational: it may be
carried by the variant (e.g. the cell type) rather than by the spectrum within a variant.
CIs are percentile bootstraps over members (pairs resampled together), numpy only and seeded,
seeded. A percentile bootstrap is adequate here: it resamples the many members of a table,
not the handful of seeds the study's comparisons have (``stats.py``). lambda_1 = -inf (an exactly vanished product) is a result,
not missing: it ranks lowest, tied with any other -inf.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from rnn_spectra.plots import save  # noqa: E402
from rnn_spectra.spectral import rows as spectral_rows  # noqa: E402
from rnn_spectra.study.stats import LEVEL, Interval  # noqa: E402

N_BOOT = 10_000  # resamples of the members (tens to hundreds per table, not a handful of seeds)


def log_jacobian_full(row: dict) -> float | None:
    """``ln ||ds_T/ds_0||_2`` (mean over the probes): ``jac_log_norm/mean`` at the largest lag,
    which is T (``log_spaced_lags`` ends at T). With a dead prefix t0 (ReLU-type cells, zero
    inputs) it is ``ds_T/ds_t0``, from the first live step (see ``monitor.py``)."""
    lags, vals = spectral_rows.jacobian_by_lag(row)
    return vals[-1] if lags and vals else None


# name -> (label, extractor of one spectra row -> float | None)
QUANTITIES: dict[str, tuple[str, Callable[[dict], float | None]]] = {
    # Largest top singular value over the recurrent matrices (per gate for LSTM/GRU: not the
    # factor of Pascanu's bound there; step_norm is, for every cell).
    "sigma_max": ("σ_max(W)", spectral_rows.sigma_max),
    "step_norm": ("‖∂s_{t+1}/∂s_t‖", spectral_rows.step_norm),  # time-averaged effective norm
    "lyapunov_top": ("λ₁", spectral_rows.lyapunov_top),  # may be -inf
    "near_zero": ("#λ≈0", spectral_rows.near_zero),  # mean count within 0.01 of zero
    "log_jac_T": ("ln‖∂s_T/∂s_0‖", log_jacobian_full),
}
WHEN = {"init": 0, "first": 1}  # index into a member's spectra rows


# ----------------------------------------------------------------------------- statistics


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (1-based, ties share the mean rank) along the last axis of ``x``, which is
    integer-coded (0 .. K-1), any leading shape. Vectorised over the bootstrap resamples: counts
    per code (one bincount, no sort), rank of code c = #below c + (#c + 1) / 2."""
    x = np.asarray(x, dtype=np.int64)
    flat = x.reshape(-1, x.shape[-1])
    k = int(flat.max()) + 1 if flat.size else 1
    keyed = flat + (np.arange(flat.shape[0]) * k)[:, None]  # rows never interleave
    counts = np.bincount(keyed.ravel(), minlength=flat.shape[0] * k).reshape(-1, k)
    below = np.cumsum(counts, axis=1) - counts
    avg = below + (counts + 1) / 2.0
    return np.take_along_axis(avg, flat, axis=1).reshape(x.shape)


def _codes(v: np.ndarray) -> np.ndarray:
    """Dense integer codes preserving order and ties (±inf allowed)."""
    return np.unique(v, return_inverse=True)[1].reshape(v.shape)


def _pairs(x: Sequence, y: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """The pairs where neither value is None or NaN (±inf kept)."""
    keep = [(a, b) for a, b in zip(x, y, strict=True) if a is not None and b is not None
            and not math.isnan(a) and not math.isnan(b)]
    return (np.asarray([a for a, _ in keep], dtype=np.float64),
            np.asarray([b for _, b in keep], dtype=np.float64))


def _rank_corr(rx: np.ndarray, ry: np.ndarray) -> np.ndarray:
    """Pearson correlation of rank rows (last axis); NaN where either side is constant."""
    dx = rx - rx.mean(axis=-1, keepdims=True)
    dy = ry - ry.mean(axis=-1, keepdims=True)
    den = np.sqrt((dx * dx).sum(-1) * (dy * dy).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (dx * dy).sum(-1) / np.where(den > 0, den, 1.0), np.nan)


def _interval(est: float, boot: np.ndarray, n: int, level: float) -> Interval:
    boot = boot[np.isfinite(boot)]
    if not math.isfinite(est) or boot.size == 0:
        return Interval(est, math.nan, math.nan, n)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(boot, [alpha, 1.0 - alpha])
    return Interval(est, float(lo), float(hi), n)


def spearman_ci(x: Sequence, y: Sequence, *, seed: int = 0, n_boot: int = N_BOOT,
                level: float = LEVEL) -> Interval:
    """Spearman's rho of paired ``x``, ``y`` (average ranks for ties) with a percentile-bootstrap
    CI resampling the pairs (resamples with a constant side are skipped). None/NaN pairs are
    dropped, ±inf kept (ranked at the ends). NaN estimate with < 3 pairs or a constant side."""
    xs, ys = _pairs(x, y)
    n = int(xs.size)
    if n < 3:
        return Interval(math.nan, math.nan, math.nan, n)
    cx, cy = _codes(xs), _codes(ys)
    est = float(_rank_corr(_ranks(cx), _ranks(cy)))
    if not math.isfinite(est):
        return Interval(math.nan, math.nan, math.nan, n)
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    return _interval(est, _rank_corr(_ranks(cx[idx]), _ranks(cy[idx])), n, level)


def _auc(codes: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUC along the last axis; NaN where one class is absent."""
    r = _ranks(codes)
    n_pos = pos.sum(-1)
    n_neg = pos.shape[-1] - n_pos
    u = (r * pos).sum(-1) - n_pos * (n_pos + 1) / 2.0
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n_pos > 0) & (n_neg > 0), u / np.maximum(n_pos * n_neg, 1), np.nan)


def auc_ci(scores: Sequence, labels: Sequence, *, seed: int = 0, n_boot: int = N_BOOT,
           level: float = LEVEL) -> Interval:
    """AUC of ``scores`` for the positive class of the boolean ``labels``: the fraction of
    (positive, negative) pairs where the positive scores higher, ties counting 1/2 (Mann-Whitney
    U / (n_pos n_neg)). AUC < 0.5: lower scores predict the positive class. Percentile-bootstrap
    CI resampling members (resamples with one class only are skipped). None/NaN scores dropped,
    ±inf kept. NaN estimate when a class is absent."""
    s, lab = _pairs(scores, [float(bool(v)) if v is not None else None for v in labels])
    n = int(s.size)
    pos = lab > 0.5
    if n == 0 or pos.all() or not pos.any():
        return Interval(math.nan, math.nan, math.nan, n)
    codes = _codes(s)
    est = float(_auc(codes, pos))
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    return _interval(est, _auc(codes[idx], pos[idx]), n, level)


# ----------------------------------------------------------------------------- the table


def _outcome(m: dict) -> tuple[bool, float | None, bool | None]:
    """(diverged, test loss / baseline or None, beats baseline or None when unknown)."""
    s = m["summary"]
    if s.get("status") == "diverged":
        return True, None, False
    loss, base = s.get("test", {}).get("loss"), s.get("baseline")
    try:
        loss, base = float(loss), float(base)
    except (TypeError, ValueError):
        return False, None, None
    if not (math.isfinite(loss) and math.isfinite(base)) or base <= 0:
        return False, None, None
    return False, loss / base, loss < base


def predictor_table(members: list[dict], *, seed: int = 0, n_boot: int = N_BOOT) -> list[dict]:
    """One row per table x quantity x when, over all members of the table (``load_members``):
    ``table, quantity, label, when, steps`` (the steps the rows were measured at), ``n`` (members
    with the quantity), ``spearman`` and ``auc`` (``Interval.as_dict()``), ``positives`` (of the
    AUC's members, those that beat the baseline), ``diverged_skipped`` (left out of rho)."""
    by_table: dict[str, list[dict]] = defaultdict(list)
    for m in members:
        by_table[m["table"]].append(m)
    out = []
    for table, ms in by_table.items():
        outcomes = [_outcome(m) for m in ms]
        for name, (label, fn) in QUANTITIES.items():
            for when, i in WHEN.items():
                rows = [m["spectra"][i] if len(m.get("spectra") or []) > i else None for m in ms]
                vals = [fn(r) if r is not None else None for r in rows]
                have = [v is not None and not math.isnan(v) for v in vals]
                rho_x = [v for v, h, o in zip(vals, have, outcomes) if h and not o[0]]
                rho_y = [o[1] for h, o in zip(have, outcomes) if h and not o[0]]
                auc_x = [v for v, h, o in zip(vals, have, outcomes) if h and o[2] is not None]
                auc_y = [o[2] for h, o in zip(have, outcomes) if h and o[2] is not None]
                out.append({
                    "table": table, "quantity": name, "label": label, "when": when,
                    "steps": sorted({r.get("step") for r, h in zip(rows, have) if h}),
                    "n": sum(have),
                    "spearman": spearman_ci(rho_x, rho_y, seed=seed, n_boot=n_boot).as_dict(),
                    "auc": auc_ci(auc_x, auc_y, seed=seed, n_boot=n_boot).as_dict(),
                    "positives": sum(auc_y),
                    "diverged_skipped": sum(h and o[0] for h, o in zip(have, outcomes)),
                })
    return out


# ----------------------------------------------------------------------------- report


def _ci_text(d: dict, null: float) -> str:
    iv = Interval.from_dict(d)
    text = iv.text(2)
    if iv.n >= 3 and math.isfinite(iv.estimate) and math.isfinite(iv.lo) and iv.lo <= null <= iv.hi:
        text += f" *not distinguishable from {null:g} at this budget*"
    return text


def render_predictors(rows: list[dict]) -> list[str]:
    """Markdown lines: a definition paragraph and one table (all tables' rows)."""
    lines = [
        "## Predictors: do early spectra predict the outcome?",
        "",
        "Each quantity is read at initialisation (*init*, step 0) and at the first spectral "
        "measurement after it (*first*), for every member of a table (all variants, settings "
        "and seeds: observational, the variant may carry a correlation). "
        "**ρ**: Spearman rank correlation with test loss / baseline (negative: higher values go "
        "with lower loss); diverged members are left out of it. **AUC**: the quantity as a score "
        "for *beats the baseline* (test loss < baseline; a diverged member does not): the "
        "fraction of (success, failure) pairs the quantity orders with success higher; above "
        "0.5 higher values predict success, below 0.5 lower values do. 95% percentile-bootstrap "
        "CIs over members in brackets; λ₁ = −∞ ranks lowest. σ_max is the largest over the "
        "recurrent matrices (per gate for LSTM/GRU); ‖∂s_{t+1}/∂s_t‖ is the effective one-step "
        "norm, time-averaged; ln‖∂s_T/∂s_0‖ is the Jacobian product over the whole sequence.",
        "",
        "| table | quantity | when | step | n | ρ (vs loss/baseline) | AUC (beats baseline) "
        "| beat baseline | diverged (not in ρ) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        steps = ", ".join(str(s) for s in r["steps"]) or "–"
        lines.append(
            f"| {r['table']} | {r['label']} | {r['when']} | {steps} | {r['n']} | "
            f"{_ci_text(r['spearman'], 0.0)} | {_ci_text(r['auc'], 0.5)} | "
            f"{r['positives']}/{r['auc']['n']} | {r['diverged_skipped']} |")
    return lines


def predictors_figure(rows: list[dict], path: str) -> str:
    """One figure, a row of panels per table: rho (left) and AUC (right) with their CIs, one bar
    per quantity x when (circles: init, squares: first). Returns ``path``."""
    tables = list(dict.fromkeys(r["table"] for r in rows))
    fig, axes = plt.subplots(max(len(tables), 1), 2, figsize=(10, 0.4 + 3.2 * max(len(tables), 1)),
                             squeeze=False)
    for ax_row, table in zip(axes, tables):
        rs = [r for r in rows if r["table"] == table]
        names = list(dict.fromkeys(r["quantity"] for r in rs))
        labels = {r["quantity"]: r["label"] for r in rs}
        for ax, key, null, xlim in ((ax_row[0], "spearman", 0.0, (-1.05, 1.05)),
                                    (ax_row[1], "auc", 0.5, (-0.05, 1.05))):
            ax.axvline(null, color="0.6", linewidth=0.8)
            for r in rs:
                d, off = r[key], (-0.15 if r["when"] == "init" else 0.15)
                y = names.index(r["quantity"]) + off
                if not math.isfinite(d["estimate"]):
                    continue
                err = ([[d["estimate"] - d["lo"]], [d["hi"] - d["estimate"]]]
                       if math.isfinite(d["lo"]) else None)
                ax.errorbar(d["estimate"], y, xerr=err, fmt="o" if r["when"] == "init" else "s",
                            color="C0" if r["when"] == "init" else "C1", capsize=3, markersize=5,
                            label=r["when"])
            ax.set_yticks(range(len(names)), [labels[q] for q in names])
            ax.set_ylim(len(names) - 0.5, -0.5)
            ax.set_xlim(*xlim)
            ax.set_title(f"{table}: " + ("Spearman ρ vs loss/baseline" if key == "spearman"
                                         else "AUC, beats baseline"), fontsize=9)
            ax.grid(axis="x", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    uniq = dict(zip(labels, handles))
    if uniq:
        fig.legend(uniq.values(), uniq.keys(), loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return save(fig, path, dpi=90)
