#!/bin/bash
# Prepared for the next GPU session, tested only on the CPU with tiny limits (2026-12-04): the Neural Statistician
# at the paper's widths with the released code's batch norm and the KL at full weight from the start, alone on the
# device for TRAIN_MIN minutes, then evaluated on test. A checkpoint in gpu/ckpt/statistician-bn (weights from an
# earlier burst) starts it with --init-from: optimizer state (57 MB at these widths) cannot travel (64 MiB a call).
# Rule, fixed here: the best validation epoch is evaluated; it ships only if its validation few-shot accuracy beats
# the shipped checkpoint's (77.8 % 5-way 1-shot, 61.1 % 20-way 1-shot at its epoch 18).
# Usage (repository root; carry gpu/ with gpu/data = ptb/, omniglot/, mnist/ copied from ../shared/data):
#   bash docs/experiments/2026-12-04-ptb-gpu/next-statistician.sh cuda 11 120
set -u
DEV=${1:-cuda}; TMIN=${2:-11}; ESEC=${3:-120}; MAXB=${4:-}; LIMIT=${5:-}
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT" runs logs
PY=${PY:-python3}; D=gpu/data
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4
START=$(date +%s)
INIT=""; [ -d gpu/ckpt/statistician-bn ] && INIT="--init-from gpu/ckpt/statistician-bn"
$PY -m training train --model statistician --dataset omniglot --data-dir $D --batch-size 32 --epochs 300 \
    --patience 30 --kl-warmup 0 --seed 0 --set batch_norm=true --preview-every 5 --device $DEV --time-limit $TMIN \
    ${MAXB:+--max-batches $MAXB} $INIT --out runs/statistician-bn > logs/train-statistician-bn.log 2>&1
echo "trained: rc $?, $(( $(date +%s) - START )) s"
timeout $ESEC $PY -m training evaluate runs/statistician-bn/best --data-dir $D --device $DEV \
    ${LIMIT:+--limit $LIMIT --episodes 20} --json logs/eval-statistician-bn.json \
    --pictures logs/statistician-bn-pictures > logs/eval-statistician-bn.log 2>&1
echo "evaluated: rc $?, $(( $(date +%s) - START )) s"
cp runs/statistician-bn/metrics.jsonl logs/ 2>/dev/null; tail -n 3 logs/train-statistician-bn.log
mkdir -p ship && for d in best last; do cp -r runs/statistician-bn/$d ship/$d; rm -f ship/$d/optimizer*.safetensors; done
tar cf - ship | split -b 15M - $OUT/ship.tar.part-
tar czf $OUT/logs.tgz logs
ls -la $OUT; echo "total $(( $(date +%s) - START )) s"
