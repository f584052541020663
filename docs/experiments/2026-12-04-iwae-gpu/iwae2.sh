#!/bin/bash
# Second burst: the shipped pair (variant c, resumed from their best epochs) trained on, alone on the GPU, for
# TRAIN_MIN minutes; checkpoints packed first, then -L_5000 on all 10k test images.
set -u
DEV=${1:-cuda}; TMIN=${2:-2.5}; ESEC=${3:-90}; K=${4:-5000}; LIMIT=${5:-}
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT" runs logs
PY=${PY:-python3}
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4
V3='[[40, 0.001], [300, 0.0003], [300, 0.00015], [340, 0.0001]]'
run() {  # name source
  rm -rf runs/$1; mkdir -p runs/$1; cp -r gpu/ckpt/$2 runs/$1/last; cp -r gpu/ckpt/$2 runs/$1/best
  $PY -m training train --model iwae --dataset mnist --data-dir gpu/data --out runs/$1 --batch-size 500 \
      --lr-stages "$V3" --patience 1000 --epochs 1000 --device $DEV --time-limit $TMIN --preview-every 100000 \
      ${EXTRA:-} > logs/train-$1.log 2>&1
  echo "$1 trained: rc $?, $(grep -c '^epoch' logs/train-$1.log) epochs"
}
run c50 iwae-mnist &
run c1 iwae-mnist-vae &
wait
tar cf $OUT/runs-c2.tar runs/c50/best runs/c1/best
for r in c50 c1; do cp runs/$r/metrics.jsonl logs/metrics-$r.jsonl; tail -n 2 logs/train-$r.log; done
for r in c50 c1; do
  ( timeout $ESEC $PY -m training evaluate runs/$r/best --k $K --chunk 50000 --data-dir gpu/data --device $DEV \
      ${LIMIT:+--limit $LIMIT} --json $OUT/eval-$r.json > logs/eval-$r.log 2>&1; echo "$r evaluated: rc $?" ) &
done
wait
tar czf $OUT/logs2.tgz logs
grep -h '"nll' $OUT/eval-*.json
ls -la $OUT
