#!/usr/bin/env bash
# The GPU benchmark record: card, driver and versions, then the benchmarks that compare us with
# PyTorch's cuDNN kernels (bench_train_step), the scan unroll (bench_unroll) and sweeps
# (bench_sweep), as one run on a GPU machine.
#
# Usage: from the repository root, with jax (CUDA build), torch (CUDA build) and this package's
# dependencies importable:
#   benchmarks/gpu_check.sh [OUT_DIR]
# Environment (default): BENCH_ARGS (none; e.g. --quick), BENCH_TIMEOUT=600 seconds per benchmark.
# Writes OUT_DIR/env.txt, OUT_DIR/log.txt (everything printed) and OUT_DIR/<benchmark>.json
# (benchmarks.run's records); OUT_DIR defaults to a new temporary folder, printed at the end.
set -euo pipefail
out=${1:-$(mktemp -d)}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  python3 -c "import jax, flax, optax, orbax.checkpoint, ml_collections, torch; \
print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, \
'torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), \
'backend', jax.default_backend(), jax.devices())"
} 2>&1 | tee "$out/env.txt"
for bench in bench_train_step bench_unroll bench_sweep; do
  # shellcheck disable=SC2086  # BENCH_ARGS is a list of flags
  timeout "${BENCH_TIMEOUT:-600}" python3 -m benchmarks.run --only "$bench" ${BENCH_ARGS:-} \
    --out "$out/$bench.json" 2>&1 | tee -a "$out/log.txt"
done
echo "wrote $out"
