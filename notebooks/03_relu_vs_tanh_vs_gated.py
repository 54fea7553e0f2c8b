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
# # ReLU vs tanh vs gated cells: the study's answer
#
# Reads a study directory (`rnn-spectra study --preset cpu --workdir STUDY`, or `make study`)
# and puts each variant's test loss next to what its spectra say: σ_max(W_s) and the top
# Lyapunov exponent at initialisation and at the end. Every variant is at its own best learning
# rate and clip threshold (chosen on validation batches).

# %% tags=["parameters"]
import os

STUDY = os.environ.get("RNN_SPECTRA_STUDY", "runs/study")

# %%
import matplotlib.pyplot as plt
import numpy as np

from rnn_spectra import workdir as wd
from rnn_spectra.study.sentences import findings
from rnn_spectra.study.results import build_results

path = os.path.join(STUDY, "results.json")
results = wd.read_json(path) if os.path.exists(path) else build_results(STUDY)
rows = results["rows"]
print(f"preset {results['preset']}: {len(rows)} variant rows, {results['members']} trained members")
for sentence in findings(results):
    print("-", sentence)

# %% [markdown]
# ## Test loss relative to the trivial baseline, per table

# %%
tables = list(dict.fromkeys(r["table"] for r in rows))
fig, axes = plt.subplots(len(tables), 1, figsize=(9, 3.2 * len(tables)), squeeze=False,
                         constrained_layout=True)
for ax, table in zip(axes[:, 0], tables):
    rs = [r for r in rows if r["table"] == table and r["test_loss_mean"] is not None]
    ratio = [r["test_loss_mean"] / r["baseline"] for r in rs]
    colours = ["tab:red" if r["seeds_diverged"] else "tab:blue" for r in rs]
    ax.barh([r["variant"] for r in rs], ratio, color=colours)
    ax.axvline(1.0, color="black", ls=":", label="trivial baseline")
    ax.set(xscale="log", xlabel="test loss / baseline (log scale; red: a seed diverged)", title=table)
    ax.tick_params(axis="y", labelsize=7)
plt.show()

# %% [markdown]
# ## What the spectra say: σ_max(W_s) and λ₁ at the end against the test loss

# %%
fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), constrained_layout=True)
family_colour = {"tanh_rnn": "tab:orange", "relu_rnn": "tab:blue", "irnn": "tab:cyan",
                 "lstm": "tab:green", "gru": "tab:purple"}
for r in rows:
    if r["test_loss_mean"] is None:
        continue
    c = family_colour.get(r["variant"].split("/")[0], "grey")
    y = r["test_loss_mean"] / r["baseline"]
    if r["sigma_max_end"] is not None:
        axes[0].scatter(r["sigma_max_end"], y, color=c)
    if r["lyapunov_top_end"] is not None and np.isfinite(r["lyapunov_top_end"]):
        axes[1].scatter(r["lyapunov_top_end"], y, color=c)
for name, c in family_colour.items():
    axes[1].scatter([], [], color=c, label=name)
axes[0].set(xlabel="σ_max(W_s) at the end", ylabel="test loss / baseline", yscale="log",
            title="largest singular value vs outcome")
axes[0].axvline(1.0, color="black", ls=":")
axes[1].set(xlabel="top Lyapunov exponent at the end (nats / step)", ylabel="test loss / baseline",
            yscale="log", title="top Lyapunov exponent vs outcome")
axes[1].axvline(0.0, color="black", ls=":")
axes[1].legend(fontsize=8)
for ax in axes:
    ax.grid(alpha=0.3)
plt.show()
