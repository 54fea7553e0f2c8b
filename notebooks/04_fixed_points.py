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
# # Fixed points and slow points: how an IRNN and a GRU hold a running sum
#
# On the adding task a network has to carry the sum of the marked values to the end of the
# sequence. Between markers the state should stay where it is, so the sum has to sit near states
# where the dynamics barely move. Following Sussillo & Barak (2013), this notebook looks for such
# states: it minimises the speed $q(s) = \frac12\|F(s, x) - s\|^2$ of one step of the cell under
# a constant input $x$, starting from states the network visits on its probe sequences. It reports
#
# * the **fixed points** ($q \le 10^{-9}$) and **slow points** (small $q$ that is not zero), and
#   the eigenvalues of the step's Jacobian there: $|\lambda| > 1$ an unstable direction, an
#   eigenvalue near 1 a direction the state can drift along without being pulled back. Fixed
#   points spread along the direction of the sum, each with an eigenvalue $\approx 1$, would be a
#   *line attractor*; a single fixed point means that the sum decays towards it, however slowly;
# * the picture: the visited states on their top principal components, coloured by the running
#   sum, with the fixed and slow points;
# * how long the sum survives when the input is held constant.
#
# The constant input is $x = 0$ ("no input": value 0, no marker). The task never shows it (every
# unmarked step still carries a value drawn from U[0, 1]), so the last section also holds the
# mean unmarked input $x = (0.5, 0)$.
#
# Two trained runs, well under a minute each on a 2-core CPU (`configs/adding.py`: Adam 1e-3,
# global-norm clipping 1):
#
# ```
# rnn-spectra train --config configs/adding.py --workdir runs/irnn_adding --config.model.cell=irnn \
#     --config.model.recurrent_init=identity --config.task.seq_len=50 --config.model.hidden_size=64 \
#     --config.train.steps=3000
# rnn-spectra train --config configs/adding.py --workdir runs/gru_adding --config.model.cell=gru \
#     --config.task.seq_len=50 --config.model.hidden_size=64 --config.train.steps=3000
# ```
#
# `rnn-spectra analyze --workdir W --fixed-points` computes the same numbers for one run from the
# command line (`fixed_points_step<N>.npz`, `fixed_points.png` and the summary paragraph).

# %% tags=["parameters"]
import os

WORKDIRS = {
    "IRNN": os.environ.get("RNN_SPECTRA_IRNN_WORKDIR", "runs/irnn_adding"),
    "GRU": os.environ.get("RNN_SPECTRA_GRU_WORKDIR", "runs/gru_adding"),
}
NUM_CANDIDATES = 256  # starting states of the search
SEQUENCES = 32  # probe sequences whose states seed it
HOLD_STEPS = 200  # steps of constant input in the last section

# %%
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import rnn_spectra as rs
from rnn_spectra.analyze import compute_fixed_points, fixed_points_counts, fixed_points_summary

runs = {name: rs.load_run(w) for name, w in WORKDIRS.items()}
for name, run in runs.items():
    cfg, summary = run.run_config, run.summary or {}
    loss, baseline = summary.get("final_eval", {}).get("loss"), summary.get("baseline")
    print(f"{name}: {cfg.model.cell}, H={cfg.model.hidden_size}, task {cfg.task.name} T={cfg.task.seq_len}, "
          f"checkpoint step {run.steps[-1]}, eval loss {loss:.3g} (baseline {baseline:.3g})"
          if loss is not None and baseline is not None else f"{name}: no summary.json (still training?)")

# %% [markdown]
# ## Fixed and slow points under $x = 0$
# `compute_fixed_points` runs `rs.spectral.fixed_points_of_run` (candidates: visited states plus
# a little noise; Adam then Levenberg-Marquardt on $q$; for ReLU cells also the exact enumeration
# `rs.spectral.enumerate_relu_fixed_points` over the activation patterns seen) and linearises the
# slow points too.

# %%
results, counts = {}, {}
for name, run in runs.items():
    results[name] = compute_fixed_points(run, run.params(), NUM_CANDIDATES, SEQUENCES)
    counts[name] = fixed_points_counts(results[name])
    print(f"{name}: {fixed_points_summary(counts[name], SEQUENCES)}\n")

# %% [markdown]
# ## Where the points are: the visited states on their top two principal components
# Each grey-to-yellow dot is a state on a probe sequence, coloured by the running sum at that
# step. A line attractor shows as fixed points lying along the colour gradient.


# %%
def running_sums(run, n):
    """The running sum after each step, in the order of ``result["states"]`` (s0, then time-major)."""
    inputs = np.asarray(run.probe_inputs(n))  # (B, T, 2): value, marker
    partial = np.cumsum(inputs[..., 0] * inputs[..., 1], axis=1)  # (B, T)
    return np.concatenate([[0.0], partial.T.reshape(-1)])


fig, axes = plt.subplots(1, len(runs), figsize=(6 * len(runs), 4.6), squeeze=False, constrained_layout=True)
sums = {}
for ax, (name, run) in zip(axes[0], runs.items()):
    r = results[name]
    states = r["states"].astype(np.float64)
    sums[name] = running_sums(run, SEQUENCES)
    assert sums[name].shape[0] == states.shape[0]
    mean = states.mean(axis=0)
    pcs = np.linalg.svd(states - mean, full_matrices=False)[2][:2].T

    def proj(p):
        return (np.asarray(p, np.float64).reshape(-1, states.shape[1]) - mean) @ pcs

    sc = ax.scatter(*proj(states).T, c=sums[name], s=5, cmap="viridis")
    ax.scatter(*proj(r["fp/slow_points"]).T, facecolors="none", edgecolors="tab:red", s=50,
               label="slow points")
    ax.scatter(*proj(r["fp/points"]).T, marker="x", c="black", s=60, label="fixed points")
    fig.colorbar(sc, ax=ax, label="running sum")
    ax.set(xlabel="PC 1", ylabel="PC 2", title=f"{name}: states, fixed and slow points (x = 0)")
    ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# ## Eigenvalues of the Jacobian at the lowest-q fixed point and slow point
# Inside the unit circle: directions pulled back to the point; on it (near 1): directions the
# state can drift along, i.e. memory.

# %%
fig, axes = plt.subplots(1, len(runs), figsize=(5 * len(runs), 5), squeeze=False, constrained_layout=True)
t = np.linspace(0, 2 * np.pi, 200)
for ax, (name, r) in zip(axes[0], results.items()):
    ax.plot(np.cos(t), np.sin(t), "k-", lw=0.8)
    for key, label, marker in (("fp/eigenvalues", "fixed point", "o"),
                               ("fp_slow/eigenvalues", "slow point", "^")):
        if len(r[key]):
            w = r[key][0]
            ax.scatter(w.real, w.imag, s=18, marker=marker, label=f"{label}: max |λ| = {abs(w[0]):.4f}")
    ax.set(xlabel="Re λ", ylabel="Im λ", aspect="equal", title=f"{name}: Jacobian eigenvalues")
    ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# ## How long does the sum survive a constant input?
# The behavioural check: append $k$ steps of a constant input to every probe sequence and read the
# network's own answer from the state $k$ steps after the sequence ended. Two numbers per $k$:
# the spread of the answers across sequences relative to $k = 0$ (1: every sequence still has its
# own answer; 0: all states have collapsed onto one point), and their correlation with the true
# sums (is what is left still the sum, up to an offset and a scale? Left out once the spread is
# below $10^{-4}$, where only rounding is left). $x = 0$ is the input of the
# fixed-point search above; $x = (0.5, 0)$ is the mean input of an unmarked step, the regime the
# network was trained in.

# %%
fig, axes = plt.subplots(2, len(runs), figsize=(6 * len(runs), 6.4), squeeze=False, sharex=True,
                         constrained_layout=True)
for col, (name, run) in enumerate(runs.items()):
    model, params = run.model, run.params()
    inputs, targets = run.probe_batch(SEQUENCES)
    T, sums_T = inputs.shape[1], np.asarray(targets)[:, 0]
    for x in ((0.0, 0.0), (0.5, 0.0)):
        held = jnp.broadcast_to(jnp.asarray(x, inputs.dtype), (inputs.shape[0], HOLD_STEPS, inputs.shape[2]))
        hidden, _ = model.unroll(params["cell"], jnp.concatenate([inputs, held], axis=1))  # (T + K, B, H)
        # The answer read from the state k = 0 .. K steps after the sequence ended: (K + 1, B).
        answers = np.asarray(model.head.apply({"params": params["readout"]}, hidden[T - 1:]))[..., 0]
        spread = answers.std(axis=1) / max(answers[0].std(), 1e-12)
        # Undefined once the answers have collapsed to rounding error.
        corr = np.asarray([np.corrcoef(a, sums_T)[0, 1] if a.std() > 1e-4 * answers[0].std() else np.nan
                           for a in answers])
        label = f"x = ({x[0]:g}, {x[1]:g})"
        axes[0, col].plot(spread, label=label)
        axes[1, col].plot(corr, label=label)
        picks = [k for k in (10, 50, HOLD_STEPS) if k <= HOLD_STEPS]
        print(f"{name}, {label}: after " + " / ".join(map(str, picks)) + " extra steps: spread "
              + " / ".join(f"{spread[k]:.3f}" for k in picks) + ", correlation with the sum "
              + " / ".join(f"{corr[k]:.3f}" for k in picks))
    axes[0, col].set(ylabel="spread of answers / at k = 0", title=name)
    axes[1, col].set(xlabel="extra steps of constant input k", ylabel="correlation with the sum",
                     ylim=(-1.05, 1.05))
    for ax in axes[:, col]:
        ax.axhline(1.0, color="black", ls=":")
        ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# ## Reading the numbers
# * Many fixed points that are **distinct only off the visited subspace** (the summary's
#   "distinct on the principal components" count is 1) are one point in the space the network
#   uses. In a ReLU network, units that are never active on the visited states can keep an
#   eigenvalue of exactly 1 from the identity initialisation; such eigenvalues say nothing about
#   how the sum is held.
# * A single stable fixed point with a largest $|\lambda|$ below 1 forgets on a time scale of
#   about $1 / (1 - |\lambda|)$ steps near it (the spread shrinks roughly like $|\lambda|^k$).
# * Slow points with $|\lambda| \approx 1$ can mark a slow manifold, an approximate line
#   attractor, when they lie along the visited states in the direction of the sum; far from the
#   visited states they say little about how the task is done.
# * The last figure is the behavioural check: the eigenvalues only describe the neighbourhood of
#   each point; the spread and correlation after extra steps show how long the memory actually
#   lasts, and how much that depends on the constant input chosen.
