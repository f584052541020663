#!/bin/bash
# IWAE GPU burst: six resumed runs (k = 50 and its k = 1 baseline, three batch/schedule variants) trained side by
# side for TRAIN_MIN minutes, then -L_5000 on all 10k test images for each run's best (validation) checkpoint.
# Usage: gpu/iwae.sh DEVICE TRAIN_MIN EVAL_S K LIMIT   (on the device: cuda 6 150 5000 "")
set -u
DEV=${1:-cuda}; TMIN=${2:-6}; ESEC=${3:-150}; K=${4:-5000}; LIMIT=${5:-}
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT" runs logs
PY=${PY:-python3}
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
$PY -c "import torch; print(torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())"
nvidia-smi -L 2>/dev/null
V3='[[40, 0.001], [300, 0.0003], [300, 0.00015], [340, 0.0001]]'
run() {  # name source batch stages
  rm -rf runs/$1; mkdir -p runs/$1; cp -r gpu/ckpt/$2 runs/$1/last; cp -r gpu/ckpt/$2 runs/$1/best
  $PY -m training train --model iwae --dataset mnist --data-dir gpu/data --out runs/$1 --batch-size $3 \
      --lr-stages "$4" --patience 1000 --epochs 1000 --device $DEV --time-limit $TMIN --preview-every 100000 ${EXTRA:-} \
      > logs/train-$1.log 2>&1
  echo "$1 trained: rc $?, $(grep -c '^epoch' logs/train-$1.log) epochs"
}
run a50 iwae-mnist 100 burda:0.1 &
run b50 iwae-mnist 500 burda:0.3 &
run c50 iwae-mnist 500 "$V3" &
run a1 iwae-mnist-vae 100 burda:0.1 &
run b1 iwae-mnist-vae 500 burda:0.3 &
run c1 iwae-mnist-vae 500 "$V3" &
wait
for r in a50 b50 c50 a1 b1 c1; do
  ( timeout $ESEC $PY -m training evaluate runs/$r/best --k $K --chunk 50000 --data-dir gpu/data --device $DEV \
      ${LIMIT:+--limit $LIMIT} --json logs/eval-$r.json > logs/eval-$r.log 2>&1; echo "$r evaluated: rc $?" ) &
done
wait
for r in a50 b50 c50 a1 b1 c1; do cp runs/$r/metrics.jsonl logs/metrics-$r.jsonl; tail -n 2 logs/train-$r.log; done
grep -h '"nll' logs/eval-*.json | head -20
for v in a b c; do tar cf $OUT/runs-$v.tar runs/${v}50/best runs/${v}1/best; done
tar czf $OUT/logs.tgz logs
ls -la $OUT
