#!/usr/bin/env bash
# One process using every GPU of one node: a data-parallel run, or a study sharded over the GPUs.
#
# Usage: from the repository root, after `make install` and the CUDA build of jax (README)
#   scripts/train_multi_gpu.sh train CONFIG WORKDIR [--config.KEY=VALUE ...]
#   scripts/train_multi_gpu.sh study PRESET WORKDIR [--config.KEY=VALUE ...]
# e.g.
#   scripts/train_multi_gpu.sh study paper runs/paper
#   CUDA_VISIBLE_DEVICES=0,1 scripts/train_multi_gpu.sh train configs/pixel_mnist.py runs/pmnist \
#       --config.train.batch_size=256
#
# train: `rnn-spectra train ... --config.parallel.mode=data`: the batch is split over the GPUs and
#   the parameters replicated (use a batch size that divides by the number of GPUs). A small RNN
#   rarely gets faster this way (its step is latency-bound); large batches or H can.
# study: `rnn-spectra study ... --config.parallel.mode=sweep`: the members that train together
#   (seeds, learning rates, inits of one program) are split over the GPUs.
# Your overrides come last, so they win. Re-running the same command resumes; SIGTERM or Ctrl-C
# saves a checkpoint and exits.
#
# Environment (default):
#   CUDA_VISIBLE_DEVICES (all GPUs)      the GPUs to use
#   NUM_DEVICES=0                        parallel.num_devices: 0 = every visible GPU, else the first N
#   RNN_SPECTRA=.venv/bin/rnn-spectra    CLI to run
#
# Writes: train: WORKDIR/ as a single run; study: WORKDIR/report.md, results.json, figures/, runs/.
set -euo pipefail

if [[ $# -lt 3 ]]; then
  echo "usage: $0 train CONFIG WORKDIR [--config.KEY=VALUE ...]" >&2
  echo "       $0 study PRESET WORKDIR [--config.KEY=VALUE ...]" >&2
  exit 2
fi
mode=$1 what=$2 workdir=$3
shift 3

RNN_SPECTRA="${RNN_SPECTRA:-.venv/bin/rnn-spectra}"
num_devices="${NUM_DEVICES:-0}"

# One process: --distributed off, even inside a multi-task Slurm allocation.
case "$mode" in
  train)
    exec "$RNN_SPECTRA" train --config "$what" --workdir "$workdir" --distributed off \
      --config.parallel.mode=data --config.parallel.num_devices="$num_devices" "$@" ;;
  study)
    exec "$RNN_SPECTRA" study --preset "$what" --workdir "$workdir" --distributed off \
      --config.parallel.mode=sweep --config.parallel.num_devices="$num_devices" "$@" ;;
  *)
    echo "$0: first argument must be train or study, got '$mode'" >&2
    exit 2 ;;
esac
