"""Record the numbers of a fixed-seed run and a smoke study, or compare two such records.

    python scripts/same_numbers.py record OUT_DIR      # train the fixed runs into OUT_DIR
    python scripts/same_numbers.py compare DIR_A DIR_B  # exit 1 unless their numbers are identical

A refactor that must not change numbers records before and after on the same machine and
compares: metrics.jsonl, spectra.jsonl, summary.json of single runs and the smoke study's
results.json must be bit-identical, except for fields that are clocks (wall times, dates).
"""

from __future__ import annotations

import json
import os
import sys

CLOCKS = {"wall_time", "wall_time_s", "started", "finished", "group_wall_time_s", "machine",
          "seconds_per_1000_steps", "checkpoint_steps", "timing_wall_time_s",
          # one model timed alone (study/timing.py): time to a target in seconds
          "seconds_per_step", "seconds_per_step_alone", "median_seconds", "median_seconds_ci"}
RUNS = {  # name -> config overrides (on configs/adding.py)
    "tanh": {"model.cell": "tanh_rnn", "model.hidden_size": 16, "task.seq_len": 20},
    "lstm_clipvalue": {"model.cell": "lstm", "model.hidden_size": 8, "task.seq_len": 12,
                       "optim.clip": "value", "optim.name": "rmsprop"},
    "exprnn": {"model.cell": "exprnn", "model.hidden_size": 8, "task.seq_len": 12},
    # The Lyapunov regulariser's QR scan is differentiated through: its numbers move first.
    "relu_lyapunov": {"model.cell": "relu_rnn", "model.hidden_size": 8, "task.seq_len": 16,
                      "control.lyapunov.weight": 1.0, "control.lyapunov.k": 2,
                      "control.lyapunov.seq_len": 12},
}
COMMON = {"train.steps": 60, "train.batch_size": 16, "train.eval_every": 20, "train.log_every": 10,
          "train.eval_batch_size": 32, "spectral.every": 30, "spectral.lyapunov_k": 4,
          "train.progress": False}


def record(out: str) -> None:
    from rnn_spectra import config as config_lib
    from rnn_spectra.config_files import load_config_file
    from rnn_spectra.loop import train_and_evaluate
    from rnn_spectra.study.run import run_study

    for name, overrides in RUNS.items():
        cfg = load_config_file("configs/adding.py")
        config_lib.apply_overrides(cfg, {k: str(v) for k, v in {**COMMON, **overrides}.items()})
        train_and_evaluate(cfg, os.path.join(out, name))
    run_study("smoke", os.path.join(out, "study"), report=True)


def _strip(x):
    if isinstance(x, dict):
        return {k: _strip(v) for k, v in x.items() if k not in CLOCKS}
    if isinstance(x, list):
        return [_strip(v) for v in x]
    return x


def _load(path: str):
    if path.endswith(".jsonl"):
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    with open(path) as f:
        return json.load(f)


def compare(a: str, b: str) -> int:
    files = [os.path.join(n, f) for n in RUNS for f in ("metrics.jsonl", "spectra.jsonl", "summary.json")]
    files.append(os.path.join("study", "results.json"))
    bad = 0
    for rel in files:
        x, y = _strip(_load(os.path.join(a, rel))), _strip(_load(os.path.join(b, rel)))
        same = x == y
        print(("same     " if same else "DIFFERENT"), rel)
        if not same and isinstance(x, dict) and isinstance(y, dict):
            for k in sorted(set(x) | set(y)):
                if x.get(k) != y.get(k):
                    print(f"    {k}: {str(x.get(k))[:100]} != {str(y.get(k))[:100]}")
        bad += not same
    return 1 if bad else 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "record":
        record(sys.argv[2])
    elif len(sys.argv) == 4 and sys.argv[1] == "compare":
        sys.exit(compare(sys.argv[2], sys.argv[3]))
    else:
        sys.exit(__doc__)
