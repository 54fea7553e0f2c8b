#!/usr/bin/env bash
# Reproduce the study at paper scale on one machine: the `paper` preset, checkpointed, then its report.
#
# Usage: from the repository root, after `make install` and the CUDA or TPU build of jax (README)
#   scripts/reproduce_paper.sh [WORKDIR] [--config.KEY=VALUE ...]
# e.g.
#   scripts/reproduce_paper.sh runs/paper
#   CUDA_VISIBLE_DEVICES=0,1 scripts/reproduce_paper.sh runs/paper --config.checkpoint.keep=2
#
# 1. `rnn-spectra data download mnist`: the pixel-MNIST tasks need MNIST in $RNN_SPECTRA_DATA/mnist
#    (default ~/.cache/rnn_spectra/mnist); files already there and verified are not fetched again.
#    Offline: copy the files there by hand and set SKIP_DOWNLOAD=1.
# 2. `rnn-spectra study --preset paper --workdir WORKDIR --no-report --distributed off
#    --config.checkpoint.every_minutes=CHECKPOINT_MINUTES`, your overrides last: 588 runs (adding
#    and copying at T up to 400, sequential and permuted pixel MNIST; 100,000 steps each) trained
#    as 105 vmapped programs, one after another, each sharded over every visible device
#    (parallel.mode=auto). Interrupted (Ctrl-C, SIGTERM to the training process, a lost
#    machine), it stops with a message; running this script again resumes where it stopped.
# 3. `rnn-spectra report --workdir WORKDIR`: WORKDIR/report.md, results.json, figures/.
# For several nodes use scripts/slurm_multinode.sbatch study paper WORKDIR instead; on a TPU pod
# slice, scripts/tpu_vm.sh study paper WORKDIR.
#
# Environment (default):
#   CHECKPOINT_MINUTES=10               checkpoint.every_minutes (besides the preset's every 2000 steps)
#   SKIP_DOWNLOAD=0                     1: do not run the MNIST download (offline machines)
#   RNN_SPECTRA_DATA                    where MNIST is kept (see step 1)
#   RNN_SPECTRA=.venv/bin/rnn-spectra   CLI to run
#
# Writes: the MNIST files (step 1), WORKDIR/ (default runs/paper): study.json, runs/, groups/,
# report.md, results.json, figures/.
set -euo pipefail

workdir=runs/paper
if [[ $# -ge 1 && "$1" != --* ]]; then
  workdir=$1
  shift
fi

RNN_SPECTRA="${RNN_SPECTRA:-.venv/bin/rnn-spectra}"

if [[ "${SKIP_DOWNLOAD:-0}" != 1 ]]; then
  "$RNN_SPECTRA" data download mnist
fi
"$RNN_SPECTRA" study --preset paper --workdir "$workdir" --no-report --distributed off \
  --config.checkpoint.every_minutes="${CHECKPOINT_MINUTES:-10}" "$@"
"$RNN_SPECTRA" report --workdir "$workdir"
