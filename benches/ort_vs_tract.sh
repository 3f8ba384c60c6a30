#!/usr/bin/env bash
# CPU speed baseline: the same UNet in onnxruntime and in `ldm bench --backend cpu` (tract), one
# run, one machine. Builds the release binaries, then runs benches/ort_vs_tract.py (which see).
#
#   benches/ort_vs_tract.sh                      # SD-1.5-shaped f32, 32x32 latents, batch 1 and 2
#   benches/ort_vs_tract.sh --latents 32,64      # also 64x64 (~20 s per eval here; minutes more)
#   benches/ort_vs_tract.sh --model m.ldm --iters 3
#   LDM_BENCH_ARGS="--cpu-weights compact" benches/ort_vs_tract.sh --label compact
#
# Needs `pip install onnxruntime numpy`. Memory: the SD-1.5 f32 UNet is 3.4 GB; onnxruntime
# peaks near twice that, tract about three times; the two never run at the same time.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import onnxruntime, numpy' 2>/dev/null; then
  echo "error: $PYTHON cannot import onnxruntime and numpy (pip install onnxruntime numpy)" >&2
  exit 1
fi
if [ "${LDM_BENCH_NO_BUILD:-0}" != 1 ]; then
  cargo build --release -p ldm-edge -p ldm-host --bins
fi
exec "$PYTHON" benches/ort_vs_tract.py "$@"
