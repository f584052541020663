#!/bin/bash
# Issue 22's 8-d pair on a lent GPU: both runs were trained to epoch 49 on the CPU (cpu.sh, by the recipe fixed in
# docs/experiments/2026-12-06-avb-all-test.md), so what is left is their measurement, fixed in the same file before
# any 8-d image was read: −L_5000 with r_α as AVB's proposal on all 10,000 test images (binarised once, seed 0; the
# L_k noise from seed 0), going on from the journals the CPU fills under all/, then the paired difference AVB − VAE.
# (Until 2026-12-06's twenty-third session this script trained the pair too; the training is done and the recipe's
# flags now live only in cpu.sh.)
# Rehearsed 2026-12-06 (twenty-third session) on the CPU only, from no journal and then from its own:
#   RESUME=/nonexistent OUT=/tmp/avb8-rehearsal bash docs/experiments/2026-12-06-avb8/gpu.sh cpu 4 2 50
#
# Before `run` (repository root): the tree must stay under 64 MiB: move checkpoints/ aside and copy MNIST:
#   mkdir -p /work/ckpt-hold gpu/data && mv checkpoints/* /work/ckpt-hold/ && cp -r ../shared/data/mnist gpu/data/
#   run: command "bash docs/experiments/2026-12-06-avb8/gpu.sh cuda", carry ["gpu"], timeout_s 540
#   then: mv /work/ckpt-hold/* checkpoints/
# Each evaluation stops itself after $MINUTES (default 3.5; GPU speed unmeasured) and keeps every image it measured
# with the random stream's state; a cut one goes on from its journal on the CPU or the next GPU (the same --chunk
# 5000: the journal refuses another), to the same samples and each device's own last float bits:
#   tar -xf OUT/avb8.tar -C docs/experiments/2026-12-06-avb8/all --wildcards '*per-image.csv*'
# What comes back: $OUT/avb8.tar (journals, JSON, logs, versions; one file, as the device returns at most eight)
# and $OUT/paired-8d.txt when both finished.
# Arguments: device, test images (--limit; default all), L_k images (--lk-images; default all), k (default 5000).
set -uo pipefail
DEV=${1:-cuda}; LIMIT=${2:-}; LK=${3:-}; K=${4:-5000}
HERE=docs/experiments/2026-12-06-avb8
FINAL=${OUT:-/tmp/avb8-gpu-out}; mkdir -p "$FINAL"
WORK=$(mktemp -d /tmp/avb8-work.XXXX)  # the working files, packed into $FINAL/avb8.tar on any exit
trap 'tar -cf "$FINAL/avb8.tar" -C "$WORK" .' EXIT
PY=python3; [ "$DEV" = cpu ] && [ -x .venv/bin/python ] && PY=.venv/bin/python
export PYTHONUNBUFFERED=1
DATA=gpu/data; [ -d "$DATA/mnist" ] || DATA=../shared/data
START=$(date +%s)
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee "$WORK/versions.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >> "$WORK/versions.txt" 2>/dev/null
RESUME=${RESUME:-$HERE/all}
[ -d "$RESUME" ] && cp "$RESUME"/*per-image.csv* "$WORK"/ 2>/dev/null
ok=1
for m in avb8-mnist avb8-mnist-vae; do
  $PY -m training evaluate "$HERE/$m/last" --k "$K" --chunk 5000 --data-dir "$DATA" --device "$DEV" \
      --time-limit "${MINUTES:-3.5}" ${LIMIT:+--limit $LIMIT} ${LK:+--lk-images $LK} --resume \
      --per-image "$WORK/$m-per-image.csv" --json "$WORK/$m.json" > "$WORK/$m.log" 2>&1
  rc=$?
  echo "$m: rc $rc, $(( $(date +%s) - START )) s"; tail -n 4 "$WORK/$m.log"
  [ $rc -eq 0 ] && ! grep -q '"partial_L' "$WORK/$m.json" || ok=0
done
if [ $ok -eq 1 ]; then
  $PY -m training paired "$WORK/avb8-mnist-vae-per-image.csv" "$WORK/avb8-mnist-per-image.csv" \
      | tee "$FINAL/paired-8d.txt"
else
  echo "an evaluation did not finish: no paired difference"
fi
echo "total $(( $(date +%s) - START )) s"
