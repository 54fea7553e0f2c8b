#!/usr/bin/env bash
# Run the CLI on a Cloud TPU VM, or on every worker of a TPU pod slice, from your machine.
#
# Usage: from the repository root, with gcloud installed and logged in, the TPU already created
#   TPU_NAME=NAME ZONE=ZONE scripts/tpu_vm.sh setup
#   TPU_NAME=NAME ZONE=ZONE scripts/tpu_vm.sh study PRESET WORKDIR [--config.KEY=VALUE ...]
#   TPU_NAME=NAME ZONE=ZONE scripts/tpu_vm.sh train CONFIG WORKDIR [--config.KEY=VALUE ...]
#   TPU_NAME=NAME ZONE=ZONE scripts/tpu_vm.sh run 'COMMAND'
# e.g.
#   TPU_NAME=v4-32 ZONE=us-central2-b scripts/tpu_vm.sh setup
#   TPU_NAME=v4-32 ZONE=us-central2-b scripts/tpu_vm.sh run '.venv/bin/rnn-spectra data download mnist'
#   TPU_NAME=v4-32 ZONE=us-central2-b scripts/tpu_vm.sh study paper SHARED/paper
#   TPU_NAME=v4-32 ZONE=us-central2-b WORKER=0 scripts/tpu_vm.sh run \
#       '.venv/bin/rnn-spectra report --workdir SHARED/paper'
#   (SHARED: a folder every worker mounts, see below)
#
# Each command is `gcloud compute tpus tpu-vm ssh NAME --zone ZONE --worker=WORKER --command ...`,
# run in ~/REMOTE_DIR on the workers:
# setup  copies this checkout's HEAD (`git archive`: commit first) to every worker, runs
#        `make install` and then `pip install -U "jax[tpu]"` into its .venv.
# study  `rnn-spectra study --preset PRESET --workdir WORKDIR --distributed auto` on every worker;
# train  `rnn-spectra train --config CONFIG --workdir WORKDIR --distributed auto` on every worker;
#        your overrides last. On a pod slice JAX finds the other workers itself and the processes
#        join; on a single-host VM it is one process. A study shards its members over all TPU
#        cores, a run is data-parallel over them (parallel.mode=auto).
# run    any shell command (quote it) on WORKER.
# On a pod slice WORKDIR must be on a filesystem every worker mounts (e.g. NFS / Filestore):
# every worker writes its part of the checkpoints there, worker 0 the metrics and the report. A
# relative WORKDIR is under ~/REMOTE_DIR. The run stops if the ssh session drops (run this in
# tmux / screen for long runs); the same command resumes from the last checkpoint.
#
# Environment (default):
#   TPU_NAME, ZONE (required)      the TPU VM / pod slice and its zone
#   PROJECT (gcloud's default)     the Google Cloud project
#   WORKER=all                     the workers to run on: all, or e.g. 0
#   REMOTE_DIR=rnn_spectra         the checkout on each worker, under its home directory
#   REMOTE_PYTHON=python3          the Python that `make install` uses on the workers (3.11+)
#
# Writes: on the workers, ~/REMOTE_DIR (setup) and WORKDIR (study / train).
set -euo pipefail

if [[ $# -lt 1 ]]; then
  echo "usage: TPU_NAME=NAME ZONE=ZONE $0 setup | study PRESET WORKDIR | train CONFIG WORKDIR | run 'COMMAND'" >&2
  exit 2
fi
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
remote_dir="${REMOTE_DIR:-rnn_spectra}"
gcloud_args=(--zone "$ZONE" --worker="${WORKER:-all}")
if [[ -n "${PROJECT:-}" ]]; then
  gcloud_args+=(--project "$PROJECT")
fi

quote() {  # quote ARGS...: each argument shell-quoted for the remote command line
  local arg
  for arg in "$@"; do printf '%q ' "$arg"; done
}
on_workers() {  # on_workers 'COMMAND': run it in ~/REMOTE_DIR on WORKER
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${gcloud_args[@]}" \
    --command "cd ~/$(quote "$remote_dir") && $1"
}

mode=$1
shift
case "$mode" in
  setup)
    archive=$(mktemp --suffix=.tar.gz)
    git archive --format=tar.gz -o "$archive" HEAD
    gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${gcloud_args[@]}" \
      --command "mkdir -p ~/$(quote "$remote_dir")"
    gcloud compute tpus tpu-vm scp "$archive" "$TPU_NAME":rnn_spectra.tar.gz "${gcloud_args[@]}"
    rm -f "$archive"
    on_workers "tar -xzf ~/rnn_spectra.tar.gz && make install PYTHON=$(quote "${REMOTE_PYTHON:-python3}") \
      && .venv/bin/pip install --quiet -U 'jax[tpu]' && .venv/bin/python -c 'import jax; print(jax.devices())'" ;;
  study)
    [[ $# -ge 2 ]] || { echo "usage: $0 study PRESET WORKDIR [--config.KEY=VALUE ...]" >&2; exit 2; }
    on_workers ".venv/bin/rnn-spectra study --preset $(quote "$1") --workdir $(quote "$2") \
      --distributed auto $(quote "${@:3}")" ;;
  train)
    [[ $# -ge 2 ]] || { echo "usage: $0 train CONFIG WORKDIR [--config.KEY=VALUE ...]" >&2; exit 2; }
    on_workers ".venv/bin/rnn-spectra train --config $(quote "$1") --workdir $(quote "$2") \
      --distributed auto $(quote "${@:3}")" ;;
  run)
    [[ $# -eq 1 ]] || { echo "usage: $0 run 'COMMAND'" >&2; exit 2; }
    on_workers "$1" ;;
  *)
    echo "$0: unknown command '$mode' (setup, study, train or run)" >&2
    exit 2 ;;
esac
