#!/usr/bin/env bash
# One GPU run of bench_train_step on a device machine (the workplace's `run` tool), over a clean
# snapshot of HEAD plus the benchmark files, so concurrent edits in the working tree don't travel:
#
#   here:   echo /.gpu_snapshot/ >> .git/info/exclude; echo /.whl/ >> .git/info/exclude
#           mkdir -p .gpu_snapshot && git archive HEAD | tar -x -C .gpu_snapshot
#           cp benchmarks/{bench_train_step,torch_baselines}.py benchmarks/gpu_check.sh .gpu_snapshot/benchmarks/
#           pip download (py3.12, manylinux) ml_collections into .whl   # not in the GPU image
#   there:  bash .gpu_snapshot/benchmarks/gpu_check.sh      (carry .gpu_snapshot and .whl)
#
# Writes $OUT/env.txt (card, driver, versions), $OUT/log.txt (everything printed) and
# $OUT/gpu.json (benchmarks.run's record). Without $OUT it writes under /tmp/gpu_check.
set -o pipefail
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
fi
[ -d .gpu_snapshot ] && cd .gpu_snapshot
export PYTHONPATH=.:/tmp/site
{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  python3 -c "import jax, flax, optax, orbax.checkpoint, ml_collections, torch; \
print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, \
'torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), \
'backend', jax.default_backend(), jax.devices())"
} 2>&1 | tee "$OUT/env.txt" || exit 1
timeout "${BENCH_TIMEOUT:-390}" python3 -m benchmarks.run --only bench_train_step $BENCH_ARGS \
  --out "$OUT/gpu.json" 2>&1 | tee "$OUT/log.txt"
