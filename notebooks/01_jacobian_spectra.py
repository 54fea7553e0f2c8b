# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Jacobian spectra of one run, checkpoint by checkpoint
#
# Does the long-range gradient $\partial h_T/\partial h_t$ vanish, explode, or survive? This
# notebook loads a run's checkpoints and, on the run's fixed probe batch, computes
#
# * every singular value of the product $\partial s_T/\partial s_{T-k}$ at log-spaced lags $k$
#   (stable in log space at any $T$), and
# * the full Lyapunov spectrum of the state dynamics (nats per step),
#
# at every checkpoint. Point `WORKDIR` at any run: a `rnn-spectra train` workdir or a member of
# a study (`STUDY/runs/<table>/<variant>/<setting>`; the report's chosen members have checkpoints
# at initialisation and at the end).

# %% tags=["parameters"]
import os

WORKDIR = os.environ.get("RNN_SPECTRA_WORKDIR", "runs/example")
MAX_CHECKPOINTS = 4  # analysed checkpoints, spread over the run
NUM_LAGS = 20

# %%
import matplotlib.pyplot as plt
import numpy as np

import rnn_spectra as rs
from rnn_spectra import plots
from rnn_spectra.analyze import compute

run = rs.load_run(WORKDIR)
cfg = run.run_config
steps = run.steps
if len(steps) > MAX_CHECKPOINTS:
    steps = [steps[i] for i in np.linspace(0, len(steps) - 1, MAX_CHECKPOINTS).round().astype(int)]
print(f"{cfg.model.cell}, H={cfg.model.hidden_size}, task {cfg.task.name} T={cfg.task.seq_len}; "
      f"checkpoints analysed: {steps}")

# %%
results = {}
for step in steps:
    results[step] = compute(run.experiment, run.params(step), num_lags=NUM_LAGS)
    lam = results[step]["lyapunov"].mean(axis=0)
    print(f"step {step:>6}: top Lyapunov exponent {lam[0]:+.3f}/step, "
          f"exponents within 0.01 of zero: {(np.abs(lam) < 0.01).sum()} of {lam.size}")

# %% [markdown]
# ## The largest singular value of $\partial h_T/\partial h_{T-k}$ against the lag
# A line that falls with the lag is a vanishing gradient; one that rises, an exploding one.

# %%
series = {f"step {s}": (r["lags"], r["jac_log_norm"]) for s, r in results.items()}
fig = plots.jacobian_norm_vs_lag(series, title=f"‖∂h_T/∂h_(T−k)‖₂ vs lag — {cfg.model.cell}")
plt.show()

# %% [markdown]
# ## Every singular value of the product at the last checkpoint (first probe sequence)

# %%
last = results[steps[-1]]
fig = plots.product_spectrum_vs_lag(last["lags"], last["product_log_sv"][0],
                                    title=f"All singular values of ∂s_T/∂s_(T−k), step {steps[-1]}")
plt.show()

# %% [markdown]
# ## Lyapunov spectra across checkpoints
# $\lambda_1 > 0$ explodes, all $\lambda_i < 0$ vanish; the count of $\lambda_i \approx 0$ is the
# number of directions that carry gradient over long lags.

# %%
fig = plots.lyapunov_spectrum({f"step {s}": r["lyapunov"].mean(axis=0) for s, r in results.items()},
                              title=f"Lyapunov spectrum — {cfg.model.cell}")
plt.show()
