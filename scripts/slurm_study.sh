#!/bin/bash
# A whole study on a Slurm cluster, one array task per group: submits the pilot's array, then a
# small job that, once the pilot has finished (afterok), plans and submits the next phase the
# same way (the extension and the confirmation follow from the pilot's choices), and at the end
# one `finish` task that writes the report. Each task is scripts/slurm_study.sbatch.
#
# Usage: from the repository root on a shared filesystem, after `make install`
#   scripts/slurm_study.sh PRESET WORKDIR [sbatch options for the tasks, e.g. --partition=cpu]
# e.g.
#   scripts/slurm_study.sh cpu runs/study --partition=short
# Environment: RNN_SPECTRA=.venv/bin/rnn-spectra; PHASE=pilot (the phase to submit; the chain
# sets it for the next ones).
set -euo pipefail

if [[ $# -lt 2 ]]; then
  echo "usage: scripts/slurm_study.sh PRESET WORKDIR [sbatch options ...]" >&2
  exit 2
fi
preset=$1 workdir=$2
shift 2
RNN_SPECTRA="${RNN_SPECTRA:-.venv/bin/rnn-spectra}"
here="$(cd "$(dirname "$0")" && pwd)"
phase="${PHASE:-pilot}"
declare -A next=([pilot]=extend [extend]=confirm [confirm]=finish)

if [[ $phase == finish ]]; then
  sbatch "$@" "$here/slurm_study.sbatch" finish "$preset" "$workdir"
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
sbatch --parsable "$@" --dependency=afterok:"${array%%;*}" --job-name=rnn-spectra-plan \
  --export=ALL,PHASE="${next[$phase]}" --wrap="$here/slurm_study.sh $preset $workdir $*"
