#!/usr/bin/env bash
# Train one run on one GPU.
#
# Usage: from the repository root, after `make install` and the CUDA build of jax (README)
#   scripts/train_single_gpu.sh CONFIG WORKDIR [--config.KEY=VALUE ...]
# e.g.
#   GPU=1 scripts/train_single_gpu.sh configs/pixel_mnist.py runs/pmnist_irnn --config.model.cell=irnn
#
# Runs `rnn-spectra train --config CONFIG --workdir WORKDIR --config.parallel.mode=none
# --distributed off` plus your overrides (given last, so they win). Re-running the same command
# resumes from WORKDIR's latest checkpoint; SIGTERM or Ctrl-C saves a checkpoint and exits.
#
# Environment (default):
#   GPU=0                          the GPU to use; ignored when CUDA_VISIBLE_DEVICES is already set
#                                  (e.g. by Slurm), which is then passed on as it is
#   RNN_SPECTRA=.venv/bin/rnn-spectra   CLI to run
#   XLA_PYTHON_CLIENT_MEM_FRACTION      JAX preallocates 75% of the GPU's memory at start; to share
#                                  one GPU between runs set e.g. 0.3 for each, or
#                                  XLA_PYTHON_CLIENT_PREALLOCATE=false (allocate on demand)
#
# Writes: WORKDIR/ (config.json, metrics.jsonl, spectra.jsonl, summary.json, checkpoints/).
set -euo pipefail

if [[ $# -lt 2 ]]; then
  echo "usage: $0 CONFIG WORKDIR [--config.KEY=VALUE ...]" >&2
  exit 2
fi
config=$1 workdir=$2
shift 2

export CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES:-${GPU:-0}}"
RNN_SPECTRA="${RNN_SPECTRA:-.venv/bin/rnn-spectra}"

# exec: the run itself receives SIGTERM / Ctrl-C and checkpoints before exiting.
exec "$RNN_SPECTRA" train --config "$config" --workdir "$workdir" \
  --distributed off --config.parallel.mode=none "$@"
