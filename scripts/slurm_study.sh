#!/bin/bash
# A whole study on a Slurm cluster, one array task per group: submits the pilot's array, then a
# small job that, once the pilot has finished (afterok), plans and submits the next phase the
# same way (the extension and the confirmation follow from the pilot's choices), and at the end
# one `finish` task that writes the report. Each task is scripts/slurm_study.sbatch.
#
# Usage: from the repository root on a filesystem the nodes share, after `make install`
#   scripts/slurm_study.sh PRESET WORKDIR [sbatch options for the tasks, e.g. --partition=cpu]
# e.g.
#   scripts/slurm_study.sh cpu runs/study --partition=short
# Prints the pilot's array job id, then returns; `squeue --me` follows the chain. Each task's
# log is slurm-<array job>_<task>.out, the planning jobs' and the report's slurm-<job>.out, all
# in the current directory (an --output=... among the options goes instead). If a phase's task
# fails, the jobs after it are cancelled (--kill-on-invalid-dep); fix the cause and run the same
# command again: groups already done are skipped, so a resubmitted study resumes.
# Environment: RNN_SPECTRA=.venv/bin/rnn-spectra (the CLI every task runs; made absolute here);
# PHASE=pilot (the phase to submit; the chain sets it for the next ones).
# Tested under a real single-node Slurm 22.05 by tests/test_slurm_cluster.py (slow, root).
set -euo pipefail

if [[ $# -lt 2 ]]; then
  echo "usage: scripts/slurm_study.sh PRESET WORKDIR [sbatch options ...]" >&2
  exit 2
fi
preset=$1
# absolute, so that tasks started elsewhere (--chdir) use the same workdir and CLI
workdir=$(realpath -m -s -- "$2")
shift 2
cli="${RNN_SPECTRA:-.venv/bin/rnn-spectra}"
if ! cli=$(command -v -- "$cli"); then
  echo "slurm_study.sh: no CLI ${RNN_SPECTRA:-.venv/bin/rnn-spectra} (run make install, or set RNN_SPECTRA)" >&2
  exit 2
fi
RNN_SPECTRA=$(realpath -s -- "$cli")
export RNN_SPECTRA  # the tasks inherit the submitter's environment (sbatch --export=ALL)
here="$(cd "$(dirname "$0")" && pwd)"
phase="${PHASE:-pilot}"
declare -A next=([pilot]=extend [extend]=confirm [confirm]=finish)

if [[ $phase == finish ]]; then  # not an array: its log is named by its job id alone
  sbatch --job-name=rnn-spectra-report --output=slurm-%j.out "$@" "$here/slurm_study.sbatch" \
    finish "$preset" "$workdir"
  exit 0
fi
groups=$("$RNN_SPECTRA" study --preset "$preset" --workdir "$workdir" --plan \
  | grep -c -- "--phase $phase --group" || true)
if (( groups == 0 )); then  # nothing in this phase (no grid point on an edge): the next one now
  PHASE=${next[$phase]} exec "$0" "$preset" "$workdir" "$@"
fi
array=$(sbatch --parsable "$@" --array=0-$((groups - 1)) "$here/slurm_study.sbatch" \
  "$phase" "$preset" "$workdir")
echo "$phase: $groups groups in array job $array"
# --wrap runs under /bin/sh: each argument quoted for it
plan=$(sbatch --parsable --job-name=rnn-spectra-plan "$@" \
  --dependency=afterok:"${array%%;*}" --kill-on-invalid-dep=yes \
  --export=ALL,PHASE="${next[$phase]}" \
  --wrap="$(printf '%q ' "$here/slurm_study.sh" "$preset" "$workdir" "$@")")
echo "${next[$phase]}: planned and submitted by job $plan once array job ${array%%;*} has succeeded"
