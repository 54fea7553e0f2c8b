"""``rnn-spectra analyze``: the full spectral picture of one checkpoint of a run, as .npz + PNGs.

Reads only the workdir (config.json, checkpoints/, spectra.jsonl). For the requested checkpoint
(default: the latest) it computes, on the run's fixed probe batch: every recurrent matrix's
singular values and eigenvalues; all singular values of ``ds_T/ds_{T-k}`` at log-spaced lags
(``product_log_singular_values``, stable at any T); the full Lyapunov spectrum (k = n); the
gradient-flow profile at every t. Figures add the spectra.jsonl history where there is one.

``analyze_fixed_points`` (``analyze --fixed-points``, which then writes nothing else) finds the
fixed and slow points of the checkpoint's dynamics under the constant input x = 0 ("no input"),
from the states the run visits on its probe sequences (``fixed_points.fixed_points_of_run``).
Every figure is drawn by ``plots`` in its one style and titled ``"<run> · step N · <what>"``.
"""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from rnn_spectra import plots
from rnn_spectra import workdir as wd
from rnn_spectra.cells import recurrent_matrices
from rnn_spectra.dynamics import make_step_fn, state_size
from rnn_spectra.errors import ConfigError, WorkdirError
from rnn_spectra.runs import load_run
from rnn_spectra.spectral.fixed_points import _unique_rows, analyze_points, fixed_points_of_run
from rnn_spectra.spectral.gradient_flow import model_gradient_flow
from rnn_spectra.spectral.jacobians import (
    jacobian_stats, log_spaced_lags, measurement_window, step_jacobians, window_summary,
)
from rnn_spectra.spectral.lyapunov import (
    kaplan_yorke_dimension, lyapunov_from_jacobians, near_zero_count,
)
from rnn_spectra.spectral.matrices import matrix_spectrum
from rnn_spectra.spectral.monitor import probe_batch
from rnn_spectra.spectral.product_spectrum import product_log_singular_values

DEFAULT_LAGS = 40  # log-spaced lags for the product spectra (each lag costs one batched SVD)


def compute(exp, params, num_lags: int = DEFAULT_LAGS, sequences: int | None = None) -> dict:
    """Every measurement of the analysis as numpy arrays (natural logs; state = flattened carry).

    Keys: ``sv/<M>``, ``eig_real/<M>``, ``eig_imag/<M>``, ``spectral_radius/<M>``,
    ``condition_number/<M>`` per recurrent matrix; ``lags`` (L,); ``product_log_sv`` (B, L, n)
    all singular values of ``ds_T/ds_{T-k}`` per probe sequence; ``jac_log_norm`` (B, L) the
    largest of them; ``lyapunov`` (B, n) the full spectrum, nats per step; ``grad_flow_t`` (T,)
    1-based; ``grad_flow_log_norm`` (T,) ``ln ||dL/dS_t||`` on the probe batch.

    Windowed as in the monitor (``monitor.py``): ``dead_prefix`` (B,) leading zero-Jacobian steps
    t0, which the lag products skip (a lag reaching into them measures ``ds_T/ds_t0``);
    ``lyapunov_start`` (B,) = min(t0 + ``lyapunov_discard``, T-1), the first step the exponents
    and averages count. ``step_norms`` (B, T) every ``||ds_{t+1}/ds_t||_2``; ``step_norm``,
    ``step_norm_max`` (B,) their mean and max over the window; ``dead_units`` (B,) the fraction of
    zero Jacobian rows over the window; ``zero_steps`` (B,) the fraction of zero Jacobians;
    ``near_zero`` (B,) exponents within 0.01 of zero; ``kaplan_yorke`` (B,) the Kaplan-Yorke
    dimension.
    """
    model, task = exp.model, exp.task
    inputs, targets = probe_batch(exp)
    if sequences is not None:
        inputs, targets = inputs[:sequences], targets[:sequences]
    T = int(inputs.shape[1])
    lags = log_spaced_lags(T, num_lags)
    out: dict[str, np.ndarray] = {"lags": lags}
    for name, W in recurrent_matrices(model.config.cell, params["cell"], model.config).items():
        spec = matrix_spectrum(np.asarray(W))
        out[f"sv/{name}"] = spec["singular_values"]
        out[f"eig_real/{name}"] = spec["eigenvalues"].real
        out[f"eig_imag/{name}"] = spec["eigenvalues"].imag
        out[f"spectral_radius/{name}"] = np.asarray(spec["spectral_radius"])
        out[f"condition_number/{name}"] = np.asarray(spec["condition_number"])
    cs = make_step_fn(model, params["cell"])
    discard = round(exp.run.spectral.lyapunov_discard * T)  # the monitor's burn-in
    barrier = jax.lax.optimization_barrier  # one LAPACK kernel at a time (see monitor.py)

    @jax.jit
    def one(xs):
        J = step_jacobians(cs.step_fn, cs.s0, xs)
        stats = jacobian_stats(J)
        t0, start = measurement_window(stats["zero"], discard)
        J, t0, start = barrier((J, t0, start, stats))[:3]
        skip = (jnp.arange(T) < jnp.minimum(t0, T - 1))[:, None, None]  # the dead prefix
        product = product_log_singular_values(jnp.where(skip, jnp.eye(J.shape[1], dtype=J.dtype), J),
                                              lags=lags)
        J, start = barrier((J, start, product))[:2]
        lam = lyapunov_from_jacobians(J, discard=start)
        extra = {"dead_prefix": t0, "lyapunov_start": start, "step_norms": stats["norm"],
                 "near_zero": near_zero_count(lam), "kaplan_yorke": kaplan_yorke_dimension(lam),
                 **window_summary(stats, start, J.shape[1])}
        return product, lam, extra

    per = [jax.device_get(one(xs)) for xs in inputs]  # one sequence at a time: T n^2 memory each
    out["product_log_sv"] = np.stack([p[0] for p in per])
    out["jac_log_norm"] = out["product_log_sv"][:, :, 0]
    out["lyapunov"] = np.stack([p[1] for p in per])
    out.update({k: np.stack([p[2][k] for p in per]) for k in per[0][2]})
    out["lyapunov_discard"] = np.asarray(discard)
    flow = jax.jit(lambda p: model_gradient_flow(model, p, inputs, targets, task.loss))(params)
    out["grad_flow_t"] = np.arange(1, T + 1)
    out["grad_flow_log_norm"] = np.asarray(jnp.log(flow))
    out["probe_inputs"] = np.asarray(inputs)
    return out


FIGURES = ("w_singular_values", "jacobian_norm_vs_lag", "product_spectrum_vs_lag",
           "lyapunov_spectrum", "gradient_flow")  # the PNGs of ``figures``, without --fixed-points


def run_label(workdir: str, cell: str) -> str:
    """The run's name in figure titles: the workdir's folder name, with the cell if it is not in it."""
    name = os.path.basename(os.path.normpath(workdir)) or workdir
    return name if cell in name else f"{name} ({cell})"


def figures(result: dict, rows: list[dict], step: int, run: str, out_dir: str) -> list[str]:
    """The ``FIGURES`` PNGs in ``out_dir``, titled ``plots.title(run, step, ...)``; ``rows`` is the
    run's spectra.jsonl up to ``step`` (may be empty)."""
    names = [k[3:] for k in result if k.startswith("sv/")]
    paths = []

    def put(name, fig):  # saved (and closed) at once: one figure in memory at a time
        paths.append(plots.save(fig, os.path.join(out_dir, f"{name}.png")))

    if rows:
        steps, sv = plots.rows_series(rows, "step")[0], plots.sv_matrices(rows)
    else:  # no history: the one checkpoint analysed
        steps, sv = np.asarray([step]), {n: result[f"sv/{n}"][None] for n in names}
    put("w_singular_values", plots.singular_values_over_training(
        steps, sv, title=plots.title(run, step, "singular values of W during training, up to this step")))

    here = f"step {step}: this analysis"
    earlier = [r for r in rows if r["step"] < step]  # the row at this step would hide under it
    jac = {here: (result["lags"], result["jac_log_norm"])}
    for r in plots.pick_rows([r for r in earlier if "jac_log_norm/mean" in r], 4):
        jac[f"training step {r['step']}: mean (spectra.jsonl)"] = (r["lags"], r["jac_log_norm/mean"])
    put("jacobian_norm_vs_lag", plots.jacobian_norm_vs_lag(
        jac, title=plots.title(run, step, "long-range Jacobian norm ‖∂h_T/∂h_(T−k)‖₂ vs lag"),
        highlight=here))

    put("product_spectrum_vs_lag", plots.product_spectrum_vs_lag(
        result["lags"], result["product_log_sv"][0],
        title=plots.title(run, step, "all singular values of ∂s_T/∂s_(T−k) vs lag, probe sequence 1")))

    lam = {f"step {step}: full spectrum, mean over probe sequences": np.mean(result["lyapunov"], axis=0)}
    for r in plots.pick_rows([r for r in rows if "lyapunov/mean" in r], 3):
        lam[f"training step {r['step']}: top {len(r['lyapunov/mean'])} (spectra.jsonl)"] = r["lyapunov/mean"]
    put("lyapunov_spectrum", plots.lyapunov_spectrum(
        lam, title=plots.title(run, step, "Lyapunov spectrum of the state dynamics")))

    flow = {here: (result["grad_flow_t"], result["grad_flow_log_norm"])}
    for r in plots.pick_rows([r for r in earlier if "grad_flow/log_norm" in r], 3):
        flow[f"training step {r['step']} (spectra.jsonl)"] = (r["grad_flow/t"], r["grad_flow/log_norm"])
    put("gradient_flow", plots.gradient_flow(
        flow, title=plots.title(run, step, "gradient norm ‖∂L/∂h_t‖ vs time step, probe batch"),
        highlight=here))
    return paths


def _write(path: str, write) -> str:
    """``write(tmp)`` then rename to ``path``: a full disk or a kill leaves no partial file; a
    failed write is one line (exit 74 for a full disk)."""
    root, ext = os.path.splitext(path)
    tmp = f"{root}.tmp.{os.getpid()}{ext}"  # np.savez and savefig go by the extension
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise wd.io_error(path, "write", e, "check the output folder (--out)") from None
    return path


def _refuse_undefined(result: dict, workdir: str, step: int) -> None:
    """The analysis of parameters that send the probe states to NaN is undefined (every Jacobian
    log-norm infinite, every exponent NaN): say so in one line instead of drawing nothing."""
    if not (np.isfinite(result["lyapunov"]).any() and np.isfinite(result["jac_log_norm"]).any()):
        raise WorkdirError(f"{workdir}: at step {step} the states on the probe sequences are not "
                           "finite (the parameters blow the state up), so its Jacobians and "
                           "exponents are undefined; analyse an earlier checkpoint with --step")


def fp_bytes(candidates: int, n: int) -> int:
    """What the fixed-point search holds at once: per candidate its state with the optimiser's
    moments, and in the refinement and linearisation an n x n Jacobian and its complex
    eigen-decomposition (float32 and complex64)."""
    return candidates * (16 * n + 3 * n * n) * 4


def _check_fp_memory(candidates: int, n: int) -> None:
    from rnn_spectra.memory import available

    need = fp_bytes(candidates, n)
    free, where = available()
    if free is not None and need > free:
        raise ConfigError(f"--candidates {candidates} needs about {wd.human_bytes(need)} for a state "
                          f"of size {n}, more than the {wd.human_bytes(free)} of {where}; choose "
                          f"at most {max(1, free // fp_bytes(1, n))} candidates")


def open_checkpoint(workdir: str, step: int | None = None, out: str | None = None):
    """``(run, params, step, out)`` of a checkpoint (default: the latest), with its output
    folder (default ``WORKDIR/analysis/step_<N>``) created."""
    run = load_run(workdir)
    state = run.state(step)
    step = int(state["step"])
    out = out or os.path.join(workdir, "analysis", f"step_{step}")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise wd.io_error(out, "create the output folder", e, "give another --out") from None
    return run, state["params"], step, out


def analyze_workdir(workdir: str, step: int | None = None, out: str | None = None,
                    num_lags: int = DEFAULT_LAGS, opened=None) -> dict:
    """Analyse a checkpoint of the run in ``workdir``; write ``spectra_step<N>.npz`` and PNGs.

    ``out`` defaults to ``WORKDIR/analysis/step_<N>``. Returns {"step", "npz", "figures", "out"}.
    """
    run, params, step, out = opened or open_checkpoint(workdir, step, out)
    exp, cfg = run.experiment, run.run_config.model
    print(f"analyzing {workdir} at step {step} ({cfg.cell}, n={cfg.hidden_size}) ...",
          file=sys.stderr, flush=True)
    result = compute(exp, params, num_lags=num_lags)
    rows = [r for r in run.spectra if r.get("step", 0) <= step]
    _refuse_undefined(result, workdir, step)
    npz = _write(os.path.join(out, f"spectra_step{step}.npz"),
                 lambda tmp: np.savez_compressed(tmp, step=np.asarray(step), **result))
    paths = figures(result, rows, step, run_label(workdir, cfg.cell), out)
    return {"step": step, "npz": npz, "figures": paths, "out": out}


FP_CANDIDATES = 256  # starting states of the fixed-point search (analyze --candidates)
FP_SEQUENCES = 32  # probe sequences whose states seed the fixed-point search (T + 1 states each)
FP_TOL_Q, FP_SLOW_Q, FP_EPS = 1e-9, 1e-4, 0.01  # fixed: q <= tol; slow: q <= slow; |lambda| vs 1
FP_VARIANCE = 0.99  # "the visited subspace": the states' top principal components holding this


def check_candidates(candidates, model=None) -> int:
    """``candidates`` as an int >= 1 (and, given the ``model``, whose search fits in memory),
    else a one-line ConfigError."""
    if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 1:
        raise ConfigError(f"--candidates must be a positive integer (starting states of the "
                          f"fixed-point search), got {candidates!r}")
    if model is not None:
        _check_fp_memory(candidates, state_size(model))
    return candidates


def _spread(values) -> tuple[float, float, float] | None:
    values = np.asarray(values, np.float64)
    return (float(values.min()), float(np.median(values)), float(values.max())) if values.size else None


def fixed_points_counts(result: dict) -> dict:
    """The numbers ``fixed_points_summary`` reports, from a ``fixed_points_of_run`` dict.

    ``x`` the constant input (list); ``candidates``; ``fixed`` / ``slow`` unique fixed / slow
    points; ``neither`` candidates that ended above the slow threshold; ``pcs`` the states' top
    principal components holding ``FP_VARIANCE`` of their variance and ``fixed_on_pcs`` the fixed
    points still distinct (within 1e-3) once projected on them (fewer than ``fixed``: they differ
    only off the visited subspace); ``unstable`` {count of |lambda| > 1 + eps: number of fixed
    points}; ``leading_abs`` (min, median, max) of the fixed points' largest |lambda| (None without
    any); ``near_one`` fixed points with some |lambda - 1| <= eps and ``near_one_max`` the most such
    eigenvalues at one point; ``line_attractor`` those of them with every other |lambda| < 1;
    ``closest_to_one`` the eigenvalue nearest 1 over all fixed points (None); ``slow_leading_abs``
    the same spread as ``leading_abs`` over the slow points (when ``fp_slow/eigenvalues`` is in
    ``result``). ReLU cells also ``relu`` {tried, singular, found, unique, unstable,
    inactive_units, units}: ``inactive_units`` of the ``units`` are <= 0 at every visited state."""
    eig = np.asarray(result["fp/eigenvalues"])
    points = np.asarray(result["fp/points"], np.float64)
    states = np.asarray(result["states"], np.float64)
    centred = states - states.mean(axis=0)
    _, sv, vt = np.linalg.svd(centred, full_matrices=False)
    var = np.cumsum(sv ** 2) / max(float(np.sum(sv ** 2)), 1e-300)
    pcs = int(min(np.searchsorted(var, FP_VARIANCE) + 1, len(sv)))
    projected = (points - states.mean(axis=0)) @ vt[:pcs].T
    near = np.abs(eig - 1.0) <= FP_EPS
    out = {
        "x": [float(v) for v in np.asarray(result["x"])],
        "candidates": len(result["fp/all_q"]),
        "fixed": len(points),
        "slow": len(result["fp/slow_points"]),
        "neither": int(np.sum(~(np.asarray(result["fp/converged"]) | np.asarray(result["fp/slow"])))),
        "pcs": pcs,
        "fixed_on_pcs": len(_unique_rows(projected, 1e-3)) if len(points) else 0,
        "unstable": {int(k): int(v)
                     for k, v in zip(*np.unique(result["fp/num_unstable"], return_counts=True))},
        "leading_abs": _spread(np.abs(eig[:, 0])) if eig.size else None,
        "near_one": int(np.sum(np.any(near, axis=1))),
        "near_one_max": int(np.max(np.sum(near, axis=1))) if eig.size else 0,
        "line_attractor": int(np.sum(result["fp/line_attractor"])),
        "closest_to_one": complex(eig.flat[np.argmin(np.abs(eig - 1.0))]) if eig.size else None,
    }
    if "fp_slow/eigenvalues" in result:
        slow_eig = np.asarray(result["fp_slow/eigenvalues"])
        out["slow_leading_abs"] = _spread(np.abs(slow_eig[:, 0])) if slow_eig.size else None
    if "fp_relu/points" in result:
        out["relu"] = {"tried": int(result["fp_relu/num_tried"]),
                       "singular": int(result["fp_relu/num_singular"]),
                       "found": int(result["fp_relu/num_found"]),
                       "unique": len(result["fp_relu/points"]),
                       "unstable": int(np.sum(np.asarray(result["fp_relu/num_unstable"]) > 0)),
                       "inactive_units": int(np.sum(np.all(states <= 0, axis=0))),
                       "units": int(states.shape[1])}
    return out


def fixed_points_summary(counts: dict, sequences: int | None = None) -> str:
    """One paragraph in words from ``fixed_points_counts``."""
    seqs = f" of {sequences} probe sequences" if sequences else ""
    c = counts
    x = "x = 0 (no input)" if not any(c["x"]) else f"x = ({', '.join(f'{v:g}' for v in c['x'])})"
    parts = [f"Under the constant input {x}, {c['candidates']} candidate states (visited "
             f"states{seqs} plus noise) ended at {c['fixed']} distinct fixed point"
             f"{'s' * (c['fixed'] != 1)} (q <= {FP_TOL_Q:g}"
             + (f"; {c['fixed_on_pcs']} distinct on the {c['pcs']} principal components holding "
                f"{FP_VARIANCE:.0%} of the visited states' variance" if c["fixed"] else "")
             + f") and {c['slow']} slow point{'s' * (c['slow'] != 1)} ({FP_TOL_Q:g} < q <= "
             f"{FP_SLOW_Q:g}); {c['neither']} candidates ended above q = {FP_SLOW_Q:g}."]
    if c["fixed"]:
        hist = ", ".join(f"{k} at {v} point{'s' * (v != 1)}" for k, v in sorted(c["unstable"].items()))
        lo, med, hi = c["leading_abs"]
        z = c["closest_to_one"]
        parts.append(f"Unstable directions (|lambda| > {1 + FP_EPS:g}) per fixed point: {hist}. "
                     f"Largest |lambda| per fixed point: min {lo:.4f}, median {med:.4f}, max {hi:.4f}; "
                     f"eigenvalue closest to 1: {z.real:.4f}{z.imag:+.4f}i. {c['near_one']} fixed points "
                     f"have an eigenvalue within {FP_EPS:g} of 1"
                     + (f" (up to {c['near_one_max']} at one point)" if c["near_one"] else "")
                     + f", {c['line_attractor']} of them with every other eigenvalue inside the unit "
                     "circle (line-attractor candidates).")
    if c.get("slow_leading_abs"):
        lo, med, hi = c["slow_leading_abs"]
        parts.append(f"Largest |lambda| per slow point: min {lo:.4f}, median {med:.4f}, max {hi:.4f}.")
    if "relu" in c:
        r = c["relu"]
        parts.append(f"Exact ReLU enumeration: {r['tried']} activation patterns tried, {r['singular']} "
                     f"singular (a continuum of fixed points or none; skipped), {r['found']} reproduced "
                     f"their pattern -> {r['unique']} distinct fixed points, {r['unstable']} of them "
                     f"unstable. {r['inactive_units']} of {r['units']} units are never active on the "
                     "visited states.")
    return " ".join(parts)


def compute_fixed_points(run, params, candidates: int = FP_CANDIDATES, sequences: int = FP_SEQUENCES,
                         x=None) -> dict:
    """``fixed_points_of_run`` on ``params`` of a ``Run`` (``load_run``), from the states of
    ``sequences`` of its probe sequences, plus ``fp_slow/eigenvalues`` and ``fp_slow/num_unstable``
    (the linearisation at the slow points). x: the constant input (default zeros, "no input").
    Thresholds ``FP_TOL_Q``, ``FP_SLOW_Q``, ``FP_EPS``. Writes nothing."""
    candidates = check_candidates(candidates)
    if isinstance(sequences, bool) or not isinstance(sequences, int) or sequences < 1:
        raise ConfigError(f"sequences must be a positive integer, got {sequences!r}")
    result = fixed_points_of_run(run.model, params, run.probe_inputs(sequences), num_candidates=candidates,
                                 x=x, tol_q=FP_TOL_Q, slow_q=FP_SLOW_Q, eps=FP_EPS)
    slow = analyze_points(run.step_fn(params).step_fn, result["x"], result["fp/slow_points"], eps=FP_EPS)
    result["fp_slow/eigenvalues"], result["fp_slow/num_unstable"] = slow["eigenvalues"], slow["num_unstable"]
    return result


def analyze_fixed_points(workdir: str, step: int | None = None, out: str | None = None,
                         candidates: int = FP_CANDIDATES, sequences: int = FP_SEQUENCES,
                         opened=None) -> dict:
    """Fixed and slow points of a checkpoint of the run in ``workdir`` (default: the latest).

    The map is one step of the cell under the constant input x = 0 ("no input"); candidates are
    ``candidates`` states drawn from the unrolls of ``sequences`` of the run's probe sequences
    (``run.probe_inputs``) plus noise (``fixed_points_of_run``: 0.1 x each unit's
    standard deviation); see ``compute_fixed_points``. Writes ``fixed_points_step<N>.npz``
    (``fp/...``, ``fp_slow/eigenvalues``, ``fp_slow/num_unstable`` the linearisation at the slow
    points, ``fp_relu/...`` for ReLU cells, ``states``, ``x``, ``step``) and ``fixed_points.png``
    (``plots.fixed_points``) into ``out`` (default ``WORKDIR/analysis/step_<N>``). Returns
    {"step", "npz", "figure", "out", "counts", "summary"}: ``fixed_points_counts`` and its paragraph.
    """
    if isinstance(sequences, bool) or not isinstance(sequences, int) or sequences < 1:
        raise ConfigError(f"sequences must be a positive integer, got {sequences!r}")
    run, params, step, out = opened or open_checkpoint(workdir, step, out)
    candidates = check_candidates(candidates, run.model)
    cfg = run.run_config.model
    print(f"fixed points of {workdir} at step {step} ({cfg.cell}, H={cfg.hidden_size}, "
          f"{candidates} candidates, x = 0) ...", file=sys.stderr, flush=True)
    result = compute_fixed_points(run, params, candidates, sequences)
    npz = _write(os.path.join(out, f"fixed_points_step{step}.npz"),
                 lambda tmp: np.savez_compressed(tmp, step=np.asarray(step), **result))
    title = plots.title(run_label(workdir, cfg.cell), step, "fixed and slow points under x = 0")
    figure = plots.save(plots.fixed_points(result, result["states"], title=title),
                        os.path.join(out, "fixed_points.png"))
    counts = fixed_points_counts(result)
    return {"step": step, "npz": npz, "figure": figure, "out": out, "counts": counts,
            "summary": f"{cfg.cell} step {step}: " + fixed_points_summary(counts, sequences)}
