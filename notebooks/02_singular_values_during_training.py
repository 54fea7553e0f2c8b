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
# # Singular values of the recurrent matrix during training
#
# Pascanu et al. (2013): $\|\partial h_{k+1}/\partial h_k\| \le \sigma_{\max}(W_s)\,\gamma$ with
# $\gamma = \max|\phi'| = 1$ for tanh and ReLU, so $\sigma_{\max} < 1$ is enough for vanishing
# gradients and $\sigma_{\max} > 1$ is needed for exploding ones. This notebook reads a run's
# `spectra.jsonl` (written during training every `spectral.every` steps) and shows how the
# spectrum of every recurrent matrix moves, next to the loss and the top Lyapunov exponent.

# %% tags=["parameters"]
import os

WORKDIR = os.environ.get("RNN_SPECTRA_WORKDIR", "runs/example")

# %%
import matplotlib.pyplot as plt
import numpy as np

import rnn_spectra as rs
from rnn_spectra import plots
from rnn_spectra.spectral.rows import lyapunov_top, sigma_max_by_matrix

run = rs.load_run(WORKDIR)
rows, metrics = run.spectra, run.metrics
if not rows:
    raise SystemExit(f"{WORKDIR}/spectra.jsonl is empty: train with --config.spectral.every=N")
cell = run.config.model.cell
print(f"{cell}: {len(rows)} spectral measurements, steps {rows[0]['step']}..{rows[-1]['step']}")

# %%
steps = np.array([r["step"] for r in rows])
fig = plots.singular_values_over_training(steps, plots.sv_matrices(rows),
                                          title=f"Singular values of the recurrent matrices — {cell}")
plt.show()

# %% [markdown]
# ## σ_max, the top Lyapunov exponent and the validation loss, side by side

# %%
fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), constrained_layout=True)
for name in sigma_max_by_matrix(rows[0]):
    axes[0].plot(steps, [sigma_max_by_matrix(r)[name] for r in rows], marker="o", label=name)
axes[0].axhline(1.0, color="black", ls=":", label="σ = 1")
axes[0].set(xlabel="training step", ylabel="σ_max", title="largest singular value")
axes[0].legend(fontsize=8)
axes[1].plot(steps, [lyapunov_top(r) for r in rows], marker="o")
axes[1].axhline(0.0, color="black", ls=":")
axes[1].set(xlabel="training step", ylabel="λ₁ (nats / step)", title="top Lyapunov exponent")
ev = [m for m in metrics if m.get("split") == "eval"]
axes[2].plot([m["step"] for m in ev], [m["loss"] for m in ev], marker="o", label="validation loss")
if run.summary:
    axes[2].axhline(run.summary["baseline"], color="black", ls=":", label="trivial baseline")
axes[2].set(xlabel="training step", ylabel="loss", title="validation loss", yscale="log")
axes[2].legend(fontsize=8)
for ax in axes:
    ax.grid(alpha=0.3)
plt.show()
