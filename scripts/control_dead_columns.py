"""Why the control study's IRNN rows at adding T = 200 end at the same loss with and without the
Lyapunov regulariser, yet with different sigma_max(W_s) (docs/control/first/results.md).

    python scripts/control_dead_columns.py [SEED] [--workdir DIR]   # default seed 100, runs/dead_columns

Trains the confirmed row's setting (learning rate 3.16e-4, Adam, 600 steps, H = 32) plain and
regularised on one seed, then splits the difference of the two final W_s by the units that are
dead (h_j = 0 on every step of 256 probe sequences) in both: tests/test_control.py
(``test_the_regulariser_reaches_dead_units_outgoing_weights...``) checks the mechanism at toy size.
"""

from __future__ import annotations

import argparse
import dataclasses
import os

import numpy as np

from rnn_spectra.loop import train_and_evaluate
from rnn_spectra.runs import load_run
from rnn_spectra.study.grid import Member, find, member_config
from rnn_spectra.study.presets import ADDING, CONTROLLED, PRESETS

ROWS = ("irnn/identity", "irnn/identity/lyapunov")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("seed", nargs="?", type=int, default=100)
    ap.add_argument("--workdir", default=os.path.join("runs", "dead_columns"))
    args = ap.parse_args()
    # the first control study's design (docs/control/first): the cpu study's budget, these rows
    preset, runs = dataclasses.replace(PRESETS["cpu"], tasks=ADDING[1:], variants=CONTROLLED), []
    for name in ROWS:
        entry, variant = find(preset, "adding_T200", name)
        member = Member(entry, variant, "none", 0.0, 10 ** -3.5, args.seed, phase="confirm")
        w = os.path.join(args.workdir, f"{name.replace('/', '__')}__seed{args.seed}")
        if not os.path.exists(os.path.join(w, "summary.json")):
            train_and_evaluate(member_config(preset, member), w)
        runs.append(load_run(w))
    x = runs[0].probe_inputs(256)
    hidden = [np.asarray(r.model.unroll(r.params()["cell"], x)[0]) for r in runs]
    dead = np.all(hidden[0] == 0, axis=(0, 1)) & np.all(hidden[1] == 0, axis=(0, 1))
    W = [np.asarray(r.params()["cell"]["W_s"], np.float64) for r in runs]
    dW = W[1] - W[0]
    sigma = [np.linalg.svd(w, compute_uv=False)[0] for w in W]
    restored = np.linalg.svd(np.where(dead[None, :], W[0], W[1]), compute_uv=False)[0]
    loss = [r.summary["final_eval"]["loss"] for r in runs]
    print(f"seed {args.seed}: validation loss plain {loss[0]:.6f}, regularised {loss[1]:.6f}; "
          f"sigma_max(W_s) {sigma[0]:.4f} vs {sigma[1]:.4f}")
    print(f"{dead.sum()} of {dead.size} units dead in both; ||dW_s||_F = {np.linalg.norm(dW):.4f}, "
          f"of it in the dead units' columns {np.linalg.norm(dW[:, dead]):.4f}, elsewhere "
          f"{np.linalg.norm(dW[:, ~dead]):.2e}; max |h_reg - h_plain| = "
          f"{np.abs(hidden[1] - hidden[0]).max():.2e}")
    print(f"the regularised W_s with the plain run's dead-unit columns: sigma_max {restored:.4f}")


if __name__ == "__main__":
    main()
