"""``rnn-spectra analyze``: the full spectral picture of one checkpoint of a run, as .npz + PNGs.

Reads only the workdir (config.json, checkpoints/, spectra.jsonl). For the requested checkpoint
(default: the latest) it computes, on the run's fixed probe batch: every recurrent matrix's
singular values and eigenvalues; all singular values of ``ds_T/ds_{T-k}`` at log-spaced lags
(``product_log_singular_values``, stable at any T); the full Lyapunov spectrum (k = n); the
gradient-flow profile at every t. Figures add the spectra.jsonl history where there is one.
"""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from rnn_spectra import plots
from rnn_spectra.runs import load_run
from rnn_spectra.cells import recurrent_matrices
from rnn_spectra.errors import WorkdirError
from rnn_spectra.spectral.cellstep import make_step_fn
from rnn_spectra.spectral.gradient_flow import model_gradient_flow
from rnn_spectra.spectral.jacobians import log_spaced_lags, step_jacobians
from rnn_spectra.spectral.lyapunov import lyapunov_from_jacobians
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
    """
    model, task = exp.model, exp.task
    inputs, targets = probe_batch(exp)
    if sequences is not None:
        inputs, targets = inputs[:sequences], targets[:sequences]
    T = int(inputs.shape[1])
    lags = log_spaced_lags(T, num_lags)
    out: dict[str, np.ndarray] = {"lags": lags}
    for name, W in recurrent_matrices(model.config.cell, params["cell"]).items():
        spec = matrix_spectrum(np.asarray(W))
        out[f"sv/{name}"] = spec["singular_values"]
        out[f"eig_real/{name}"] = spec["eigenvalues"].real
        out[f"eig_imag/{name}"] = spec["eigenvalues"].imag
        out[f"spectral_radius/{name}"] = np.asarray(spec["spectral_radius"])
        out[f"condition_number/{name}"] = np.asarray(spec["condition_number"])
    cs = make_step_fn(model, params["cell"])

    @jax.jit
    def one(xs):
        J = step_jacobians(cs.step_fn, cs.s0, xs)
        return product_log_singular_values(J, lags=lags), lyapunov_from_jacobians(J)

    per = [jax.device_get(one(xs)) for xs in inputs]  # one sequence at a time: T n^2 memory each
    out["product_log_sv"] = np.stack([p[0] for p in per])
    out["jac_log_norm"] = out["product_log_sv"][:, :, 0]
    out["lyapunov"] = np.stack([p[1] for p in per])
    flow = jax.jit(lambda p: model_gradient_flow(model, p, inputs, targets, task.loss))(params)
    out["grad_flow_t"] = np.arange(1, T + 1)
    out["grad_flow_log_norm"] = np.asarray(jnp.log(flow))
    out["probe_inputs"] = np.asarray(inputs)
    return out


def figures(result: dict, rows: list[dict], step: int, cell: str, out_dir: str) -> list[str]:
    """The analysis PNGs in ``out_dir``; ``rows`` is the run's spectra.jsonl (may be empty)."""
    tag = f"{cell}, checkpoint step {step}"
    names = [k[3:] for k in result if k.startswith("sv/")]
    paths = []
    if rows:
        steps, sv = plots.rows_series(rows, "step")[0], plots.sv_matrices(rows)
    else:  # no history: the one checkpoint analysed
        steps, sv = np.asarray([step]), {n: result[f"sv/{n}"][None] for n in names}
    fig = plots.singular_values_over_training(
        steps, sv, title=f"Singular values of W during training\n{cell}, up to step {step}")
    paths.append(plots.save(fig, os.path.join(out_dir, "w_singular_values.png")))

    here = f"step {step}: this analysis"
    earlier = [r for r in rows if r["step"] < step]  # the row at this step would hide under it
    jac = {here: (result["lags"], result["jac_log_norm"])}
    for r in plots.pick_rows([r for r in earlier if "jac_log_norm/mean" in r], 4):
        jac[f"training step {r['step']}: mean (spectra.jsonl)"] = (r["lags"], r["jac_log_norm/mean"])
    fig = plots.jacobian_norm_vs_lag(jac, title=f"Long-range Jacobian norm ‖∂h_T/∂h_(T−k)‖₂ vs lag\n{tag}",
                                     highlight=here)
    paths.append(plots.save(fig, os.path.join(out_dir, "jacobian_norm_vs_lag.png")))

    fig = plots.product_spectrum_vs_lag(
        result["lags"], result["product_log_sv"][0],
        title=f"All singular values of ∂s_T/∂s_(T−k) vs lag\n{tag}, probe sequence 1")
    paths.append(plots.save(fig, os.path.join(out_dir, "product_spectrum_vs_lag.png")))

    lam = {f"step {step}: full spectrum, mean over probe sequences": np.mean(result["lyapunov"], axis=0)}
    for r in plots.pick_rows([r for r in rows if "lyapunov/mean" in r], 3):
        lam[f"training step {r['step']}: top {len(r['lyapunov/mean'])} (spectra.jsonl)"] = r["lyapunov/mean"]
    fig = plots.lyapunov_spectrum(lam, title=f"Lyapunov spectrum of the state dynamics\n{tag}")
    paths.append(plots.save(fig, os.path.join(out_dir, "lyapunov_spectrum.png")))

    flow = {here: (result["grad_flow_t"], result["grad_flow_log_norm"])}
    for r in plots.pick_rows([r for r in earlier if "grad_flow/log_norm" in r], 3):
        flow[f"training step {r['step']} (spectra.jsonl)"] = (r["grad_flow/t"], r["grad_flow/log_norm"])
    fig = plots.gradient_flow(flow, title=f"Gradient norm ‖∂L/∂h_t‖ vs time step\n{tag}, probe batch",
                              highlight=here)
    paths.append(plots.save(fig, os.path.join(out_dir, "gradient_flow.png")))
    return paths


def analyze_workdir(workdir: str, step: int | None = None, out: str | None = None,
                    num_lags: int = DEFAULT_LAGS) -> dict:
    """Analyse a checkpoint of the run in ``workdir``; write ``spectra_step<N>.npz`` and PNGs.

    ``out`` defaults to ``WORKDIR/analysis/step_<N>``. Returns {"step", "npz", "figures", "out"}.
    """
    run = load_run(workdir)
    state = run.state(step)
    params, step, exp = state["params"], int(state["step"]), run.experiment
    out = out or os.path.join(workdir, "analysis", f"step_{step}")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise WorkdirError(f"cannot create output directory {out}: {e.strerror}") from None
    cfg = run.run_config.model
    print(f"analyzing {workdir} at step {step} ({cfg.cell}, n={cfg.hidden_size}) ...",
          file=sys.stderr, flush=True)
    result = compute(exp, params, num_lags=num_lags)
    rows = [r for r in run.spectra if r.get("step", 0) <= step]
    npz = os.path.join(out, f"spectra_step{step}.npz")
    np.savez_compressed(npz, step=np.asarray(step), **result)
    paths = figures(result, rows, step, cfg.cell, out)
    return {"step": step, "npz": npz, "figures": paths, "out": out}
