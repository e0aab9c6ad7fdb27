#!/usr/bin/env bash
# GPU validation on a machine with an NVIDIA GPU, about five minutes. Installs nothing from the network:
# wheels prepared with shared/tools/gpu-host-wheels.sh (ray, torch-tb-profiler, ray's missing dependencies)
# are installed from WHEELS (default .whl) into a private folder; the host's own torch is used.
#
#   WHEELS=.whl OUT=gpu-out bash scripts/gpu-check.sh
#
# Steps (each writes under OUT, so what finished survives a timeout):
#   1. the CUDA tests (tests/test_cuda.py and the CUDA profile test);
#   2. lstm-bench check --device cuda (parity of naive and lstmcell against cuDNN);
#   3. the harness against a bare PyTorch loop on the same GPU (scripts/bench_vs_bare.py);
#   4. a GPU sweep through Ray (suites/gpu-check.yaml: cudnn, naive, lstmcell at hidden 128/512/1024,
#      train and infer, and profiles at row/512), then its report.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
WHEELS=${WHEELS:-.whl}
PY=${PY:-python3}
mkdir -p "$OUT"
log() { echo "== $(date +%T) $*" | tee -a "$OUT/steps.log"; }

if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/lstm-bench-site \
    "$WHEELS"/*.whl || { echo "wheel install failed"; exit 1; }
  export PYTHONPATH=/tmp/lstm-bench-site:$PWD${PYTHONPATH:+:$PYTHONPATH}
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1 RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
$PY -c "import torch, ray; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), 'ray', ray.__version__)" | tee -a "$OUT/gpu.txt"

log "1. CUDA tests"
timeout 240 $PY -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_profile.py -k "cuda or Cuda or CUDA" 2>&1 | tail -15 | tee "$OUT/cuda-tests.txt"

log "2. parity on cuda"
timeout 120 $PY -m harness.cli check --device cuda 2>&1 | tee "$OUT/check-cuda.txt"

log "3. harness vs bare loop on this GPU"
for h in 128 512; do
  timeout 120 $PY scripts/bench_vs_bare.py --device cuda --rounds 2 --hidden-size $h 2>&1 | tee -a "$OUT/bench-vs-bare-cuda.txt"
done

log "4. GPU sweep through Ray, then the report"
timeout 400 $PY -m harness.cli run suites/gpu-check.yaml --out "$OUT/runs" --no-progress --report 2>&1 | tail -60 \
  | tee "$OUT/sweep.txt"
# Run directories are deep; pack them into one file that travels well.
tar czf "$OUT/runs.tar.gz" -C "$OUT" runs && rm -rf "$OUT/runs"
log "done: $OUT"
