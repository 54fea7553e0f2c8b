"""Figures of the spectral measurements (matplotlib, Agg backend: files, no display needed).

Every function takes plain arrays (or spectra.jsonl rows), draws on ``ax`` if given (so the study
can compose panels), and returns the figure; ``save(fig, path)`` writes a PNG. Titles, labelled
axes with units and legends are always set, so a figure reads without its caption. Logs are
natural logs, as everywhere in ``rnn_spectra``.

All figures share one look: ``STYLE`` (font sizes, grid, dpi) is applied inside each figure
function, and ``title(run, step, what)`` gives the one title format, ``"<run> · step N · <what>"``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

DPI = 120  # every saved PNG
# One look for every figure: set here, not per call, so the analysis figures cannot drift apart.
STYLE = {
    "font.size": 9, "axes.titlesize": 10, "figure.titlesize": 11, "axes.labelsize": 9,
    "xtick.labelsize": 8, "ytick.labelsize": 8, "legend.fontsize": 7.5, "legend.framealpha": 0.9,
    "axes.grid": True, "grid.alpha": 0.3, "grid.linewidth": 0.6, "savefig.dpi": DPI,
}


def title(run: str, step: int, what: str) -> str:
    """The one title format of the analysis figures: ``"<run> · step N · <what>"``."""
    return f"{run} · step {step} · {what}"


def _styled(draw):
    """Draw under ``STYLE``: text sizes and the grid are fixed when the artists are made."""
    @functools.wraps(draw)
    def wrapper(*args, **kwargs):
        with plt.rc_context(STYLE):
            return draw(*args, **kwargs)
    return wrapper


def _axes(ax, figsize=(6.4, 4.2)):
    if ax is not None:
        return ax.figure, ax
    fig, ax = plt.subplots(figsize=figsize, constrained_layout=True)
    return fig, ax


def to_float(a) -> np.ndarray:
    """Float array with the JSON spellings of non-finite values ("nan", "-inf") turned back."""
    return np.asarray(a, dtype=np.float64)


def _emphasis(label: str, highlight: str | None) -> dict:
    if highlight is None:
        return {}
    return {"lw": 2.5, "zorder": 3} if label == highlight else {"lw": 1.2, "ls": "--", "alpha": 0.8}


def save(fig, path: str, dpi: int = DPI, tight: bool = False) -> str:
    """Write ``fig`` to ``path`` (directories created) and close it; returns the path. Atomic:
    a full disk or a kill leaves the old file or none, never a truncated PNG; a failed write is
    one line (exit 74 for a full disk, ``workdir.io_error``). ``tight``: crop to what is drawn,
    a legend placed outside the axes included (without it that legend is cut off)."""
    from rnn_spectra import workdir as wd

    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fig.savefig(tmp, dpi=dpi, format=os.path.splitext(path)[1][1:] or "png",
                    bbox_inches="tight" if tight else None)
        os.replace(tmp, path)
    except OSError as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise wd.io_error(path, "write the figure", e, "check the folder's permissions") from None
    finally:
        plt.close(fig)
    return path


@_styled
def singular_values_over_training(steps: Sequence[int], sv_by_matrix: Mapping[str, np.ndarray],
                                  title: str | None = None, ax=None):
    """Singular values of each recurrent matrix vs training step.

    ``sv_by_matrix[name]`` is (S, k): the k recorded singular values at each of the S steps.
    Largest and smallest are drawn bold, the median dashed, the rest faint; sigma = 1 (the
    vanishing/exploding boundary for tanh and ReLU) is marked. Several matrices (gates) get one
    panel each, unless ``ax`` is given.
    """
    title = title or "Singular values of the recurrent matrices during training"
    if ax is None and len(sv_by_matrix) > 1:
        cols = 2
        rows = (len(sv_by_matrix) + 1) // 2
        fig, axes = plt.subplots(rows, cols, figsize=(10, 3.2 * rows), constrained_layout=True,
                                 sharex=True, squeeze=False)
        for panel, (name, sv) in zip(axes.flat, sv_by_matrix.items()):
            _sv_panel(panel, steps, {name: sv}, f"{name}")
        for panel in list(axes.flat)[len(sv_by_matrix):]:
            panel.set_visible(False)
        fig.suptitle(title)
        return fig
    fig, ax = _axes(ax)
    _sv_panel(ax, steps, sv_by_matrix, title)
    return fig


def _sv_panel(ax, steps, sv_by_matrix, title):
    steps = np.asarray(steps)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    mark = "o" if len(steps) < 3 else None
    for i, (name, sv) in enumerate(sv_by_matrix.items()):
        sv = to_float(sv)
        color = colors[i % len(colors)]
        if sv.shape[1] > 2:
            ax.plot(steps, sv[:, 1:-1], color=color, alpha=0.08, lw=0.6)
        ax.plot(steps, sv[:, 0], color=color, lw=2, marker=mark, label=f"{name}: largest σ")
        ax.plot(steps, np.median(sv, axis=1), color=color, lw=1.2, ls="--", marker=mark, label=f"{name}: median σ")
        ax.plot(steps, sv[:, -1], color=color, lw=1.2, ls=":", marker=mark, label=f"{name}: smallest σ")
    ax.axhline(1.0, color="k", lw=0.8, alpha=0.6, label="σ = 1")
    values = np.concatenate([to_float(v).ravel() for v in sv_by_matrix.values()] or [np.ones(1)])
    positive = values[np.isfinite(values) & (values > 0)]
    # A log axis over less than a decade shows no tick labels; linear reads better there.
    log_axis = positive.size > 0 and positive.max() / positive.min() > 10
    if log_axis:
        ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("singular value σ of W" + (" (log scale)" if log_axis else ""))
    ax.set_title(title)
    ax.legend()


@_styled
def jacobian_norm_vs_lag(series: Mapping[str, tuple[Sequence[int], np.ndarray]],
                         title: str | None = None, ax=None, highlight: str | None = None):
    """``ln ||dh_T/dh_{T-k}||_2`` vs lag k; ``series[label] = (lags (L,), values)``.

    Plotted as the natural log on a linear axis — a log-scale plot that survives values like
    e^2000 — with the lag on a log axis. Values (L,), or (B, L) per probe sequence, drawn as the
    mean with the min–max band. The ``highlight`` label is drawn bold, on top.
    """
    fig, ax = _axes(ax)
    for label, (lags, v) in series.items():
        lags, v = np.asarray(lags), to_float(v)
        if v.ndim == 2:
            ok = np.where(np.isfinite(v), v, np.nan)
            line, = ax.plot(lags, np.nanmean(ok, axis=0), marker="o", ms=3,
                            label=f"{label} (mean, band: min–max over sequences)",
                            **_emphasis(label, highlight))
            ax.fill_between(lags, np.nanmin(ok, axis=0), np.nanmax(ok, axis=0), color=line.get_color(), alpha=0.2)
        else:
            ax.plot(lags, v, marker="o", ms=3, label=label, **_emphasis(label, highlight))
    ax.axhline(0.0, color="k", lw=0.8, alpha=0.6, label="norm 1 (no growth or decay)")
    ax.set_xscale("log")
    ax.set_xlabel("lag k = T − t (time steps, log scale)")
    ax.set_ylabel("ln ‖∂h_T/∂h_(T−k)‖₂ (nats)")
    ax.set_title(title or "Long-range Jacobian norm vs lag")
    ax.legend()
    return fig


ZERO_MARKER = "v"  # an exactly-zero singular value, drawn at the floor of the axis


def log_floor(values: np.ndarray) -> float:
    """Where ln 0 = -inf is drawn: a step below the lowest finite value (and below ln 1 = 0)."""
    finite = values[np.isfinite(values)]
    lo, hi = (min(finite.min(), 0.0), max(finite.max(), 0.0)) if finite.size else (0.0, 0.0)
    return float(lo - 0.08 * ((hi - lo) or 1.0))


@_styled
def product_spectrum_vs_lag(lags: Sequence[int], log_sv: np.ndarray, title: str | None = None,
                            max_lines: int = 64, ax=None):
    """All singular values of ``dh_T/dh_{T-k}`` vs lag: log_sv (L, n), natural logs, descending.

    An exactly-zero singular value (a ReLU product with dead units: ln sigma = -inf) would vanish
    from a log plot; it is drawn at the floor of the axis (``log_floor``) with a ``ZERO_MARKER``
    in its index's colour, its line runs down to the floor, and the legend gives the count.
    """
    fig, ax = _axes(ax)
    lags, log_sv = np.asarray(lags), to_float(log_sv)
    n = log_sv.shape[1]
    zero = np.isneginf(log_sv)
    floor = log_floor(log_sv)
    shown = np.where(zero, floor, log_sv)
    idx = np.unique(np.linspace(0, n - 1, min(n, max_lines)).round().astype(int))
    cmap = plt.get_cmap("viridis")
    for j in idx:
        ax.plot(lags, shown[:, j], color=cmap(j / max(n - 1, 1)), lw=0.8, alpha=0.8)
    ax.plot(lags, shown[:, 0], color="k", lw=2, label="largest σ₁")
    ax.axhline(0.0, color="k", lw=0.8, ls="--", alpha=0.6, label="σ = 1")
    if zero.any():
        rows, cols = np.nonzero(zero[:, idx])
        per_lag = zero.sum(axis=1)
        worst = int(np.argmax(per_lag))  # the lag with the most zeros
        ax.axhline(floor, color="0.4", lw=0.8, ls=":")
        ax.scatter(lags[rows], np.full(len(rows), floor), marker=ZERO_MARKER, s=22, zorder=3,
                   c=[cmap(j / max(n - 1, 1)) for j in idx[cols]], edgecolors="k", linewidths=0.4,
                   label=f"σ_i = 0 exactly (ln σ = −∞), drawn at the floor: {int(zero.sum())} of "
                         f"{zero.size} values, up to {int(per_lag[worst])} of {n} at one lag")
        top = max(float(np.max(log_sv[np.isfinite(log_sv)], initial=0.0)), 0.0)
        ax.set_ylim(bottom=floor - 0.04 * (top - floor))  # the floor markers sit inside the axes
    # The colour bar is the index of sigma_i, 1..n: every index is drawn (zeros at the floor).
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(1, n))
    fig.colorbar(sm, ax=ax, label="index i of σ_i (1 = largest)")
    ax.set_xscale("log")
    ax.set_xlabel("lag k = T − t (time steps, log scale)")
    ax.set_ylabel("ln σ_i(∂s_T/∂s_(T−k)) (nats)")
    ax.set_title(title or "Singular values of the Jacobian product vs lag")
    ax.legend()
    return fig


@_styled
def lyapunov_spectrum(exponents: Mapping[str, np.ndarray], title: str | None = None, ax=None):
    """Lyapunov exponents lambda_i vs index i, one line per label; values in nats per step."""
    fig, ax = _axes(ax)
    for label, lam in exponents.items():
        lam = to_float(lam)
        ax.plot(np.arange(1, lam.shape[-1] + 1), lam, marker="o", ms=3, label=label)
    ax.axhline(0.0, color="k", lw=0.8, alpha=0.6, label="λ = 0 (neutral)")
    ax.set_xlabel("exponent index i (1 = largest)")
    ax.set_ylabel("Lyapunov exponent λ_i (nats per time step)")
    ax.set_title(title or "Lyapunov spectrum of the state dynamics")
    ax.legend()
    return fig


@_styled
def gradient_flow(series: Mapping[str, tuple[Sequence[int], np.ndarray]], title: str | None = None,
                  ax=None, highlight: str | None = None):
    """``ln ||dL/dh_t||`` vs time step t; ``series[label] = (t (P,), values (P,))``; the
    ``highlight`` label is drawn bold, on top."""
    fig, ax = _axes(ax)
    for label, (t, v) in series.items():
        ax.plot(np.asarray(t), to_float(v), label=label, **_emphasis(label, highlight))
    ax.set_xlabel("time step t of the sequence")
    ax.set_ylabel("ln ‖∂L/∂h_t‖₂ (nats)")
    ax.set_title(title or "Gradient flow: loss gradient w.r.t. the hidden state at each step")
    ax.legend()
    return fig


MOST_STABLE = 3  # fixed points whose eigenvalues the fixed-point figure shows


def _below(ax) -> None:
    """The legend under the panel, never over its data (the unit circle fills the panel)."""
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncols=2)


@_styled
def fixed_points(result, states, title: str | None = None, most_stable: int = MOST_STABLE):
    """Left, the visited states (grey) with the fixed points (filled) / slow points (hollow) /
    exactly enumerated ReLU fixed points (x) on the states' top two principal components,
    coloured by log10 q when there are points of different q (else q is in the legend); right,
    the eigenvalues of the ``most_stable`` fixed points (smallest max |lambda|, as many as exist)
    with the unit circle. ``result``: the dict of ``fixed_points_of_run`` (or anything with
    ``as_dict("fp/")``, as ``FixedPoints``); ``states`` (N, n) or (..., n)."""
    r = result.as_dict("fp/") if hasattr(result, "as_dict") else result
    states = np.asarray(states, np.float64)
    states = states.reshape(-1, states.shape[-1])
    mean = states.mean(axis=0)
    _, _, vt = np.linalg.svd(states - mean, full_matrices=False)
    pcs = np.zeros((states.shape[1], 2))
    pcs[:, :min(2, vt.shape[0])] = vt[:2].T

    def proj(p):
        return (np.asarray(p, np.float64).reshape(-1, states.shape[1]) - mean) @ pcs

    fig, (ax, ax_eig) = plt.subplots(1, 2, figsize=(11, 5.2), constrained_layout=True)
    st = proj(states)
    ax.scatter(st[:, 0], st[:, 1], s=4, c="0.8", label=f"visited states ({len(st)})")
    q, slow_q = np.asarray(r["fp/q"], np.float64), np.asarray(r["fp/slow_q"], np.float64)
    fp, sp = proj(r["fp/points"]), proj(r["fp/slow_points"])
    logq = np.log10(np.maximum(np.concatenate([q, slow_q]), 1e-30))  # q = 0 exactly: at 1e-30
    if logq.size > 1 and logq.max() > logq.min():  # several speeds: a colour bar reads them
        norm = matplotlib.colors.Normalize(logq.min(), logq.max())
        cmap = plt.get_cmap("viridis")
        sc = ax.scatter(fp[:, 0], fp[:, 1], c=logq[:len(q)], norm=norm, cmap=cmap, s=40,
                        edgecolors="k", label=f"fixed points ({len(fp)})")
        ax.scatter(sp[:, 0], sp[:, 1], facecolors="none", s=40, edgecolors=cmap(norm(logq[len(q):])),
                   label=f"slow points ({len(sp)})")
        fig.colorbar(sc, ax=ax, label="log10 q" + (" (q = 0 drawn at −30)" if (logq <= -30).any() else ""))
    else:  # one point (or all of one speed): a colour bar of one value says nothing
        def speed(values):
            return f", q = {values[0]:.1e}" if len(values) else ""

        ax.scatter(fp[:, 0], fp[:, 1], c="tab:blue", s=40, edgecolors="k",
                   label=f"fixed point{'s' * (len(fp) != 1)} ({len(fp)}{speed(q)})")
        ax.scatter(sp[:, 0], sp[:, 1], facecolors="none", edgecolors="tab:orange", s=40,
                   label=f"slow point{'s' * (len(sp) != 1)} ({len(sp)}{speed(slow_q)})")
    if "fp_relu/points" in r and len(r["fp_relu/points"]):
        rp = proj(r["fp_relu/points"])
        ax.scatter(rp[:, 0], rp[:, 1], marker="x", c="tab:red", s=30,
                   label=f"ReLU enumeration ({len(rp)})")
    ax.set(xlabel="PC 1 of the visited states", ylabel="PC 2", title="fixed and slow points")
    _below(ax)

    t = np.linspace(0, 2 * np.pi, 200)
    ax_eig.plot(np.cos(t), np.sin(t), "k-", lw=0.8, label="|λ| = 1")
    eig = np.asarray(r["fp/eigenvalues"])
    shown = np.argsort(np.abs(eig[:, 0]))[:most_stable] if eig.size else []
    for i in shown:
        ax_eig.scatter(eig[i].real, eig[i].imag, s=15,
                       label=f"fixed point {i + 1}: max |λ| = {abs(eig[i, 0]):.3f}")
    if len(shown) == 0:
        ax_eig.text(0, 0, "no fixed points", ha="center")
    which = {0: ": no fixed point found", 1: " at the one fixed point" if len(eig) == 1 else
             " at the most stable fixed point"}.get(len(shown), f" at the {len(shown)} most stable fixed points")
    ax_eig.set(xlabel="Re λ", ylabel="Im λ", title=f"Jacobian eigenvalues{which}", aspect="equal")
    _below(ax_eig)
    if title:
        fig.suptitle(title)
    return fig


def rows_series(rows: Sequence[Mapping], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, stacked values) of ``key`` across spectra.jsonl rows that have it."""
    picked = [r for r in rows if key in r]
    return (np.asarray([r["step"] for r in picked]),
            np.asarray([to_float(r[key]) for r in picked]))


def pick_rows(rows: Sequence[Mapping], count: int = 5) -> list[Mapping]:
    """Up to ``count`` rows evenly spread over training (always the first and the last)."""
    if len(rows) <= count:
        return list(rows)
    idx = np.unique(np.linspace(0, len(rows) - 1, count).round().astype(int))
    return [rows[i] for i in idx]


def sv_matrices(rows: Sequence[Mapping]) -> dict[str, np.ndarray]:
    """{matrix name: (S, k)} singular values over the rows (full ``sv/`` or top+bottom extremes)."""
    if not rows:
        return {}
    out = {}
    for key in rows[0]:
        if key.startswith("sv/"):
            out[key[3:]] = rows_series(rows, key)[1]
        elif key.startswith("sv_top/"):
            name = key[len("sv_top/"):]
            top = rows_series(rows, key)[1]
            bottom = rows_series(rows, f"sv_bottom/{name}")[1]
            out[name] = np.concatenate([top, bottom], axis=1)
    return out
