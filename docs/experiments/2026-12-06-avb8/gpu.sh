#!/bin/bash
# Issue 22's 8-d pair on a lent GPU: the recipe fixed in docs/experiments/2026-12-06-avb-all-test.md (the shipped
# 32-d pair's nets and schedule at z_size 8, eps_dim 32, 16 basis noises; 49 epochs, the last one measured, nothing
# selected), the VAE first, then −L_5000 on all 10,000 test images for each run that reached its last epoch
# (journals kept, as for the 32-d pair), then the paired difference AVB − VAE.
# Prepared 2026-12-06 (a twentieth session) and rehearsed on the CPU only:
#   OUT=/tmp/avb8-rehearsal bash docs/experiments/2026-12-06-avb8/gpu.sh cpu 2 20 4 50 --max-batches 2
# A lease is 15 minutes: run docs/experiments/2026-12-04-avb/gpu-eval.sh (the 32-d pair) first if it is not done.
#
# Before `run` (repository root): the tree must stay under 64 MiB: move checkpoints/ aside and copy MNIST:
#   mkdir -p /work/ckpt-hold gpu/data && mv checkpoints/* /work/ckpt-hold/ && cp -r ../shared/data/mnist gpu/data/
#   run: command "bash docs/experiments/2026-12-06-avb8/gpu.sh cuda", carry ["gpu"], timeout_s 540
#   then: mv /work/ckpt-hold/* checkpoints/
# What comes back ($OUT holds at most eight files of 16 MiB): <run>.tar for each run (last/ without its optimizer
# state, its progress and card inputs, the journal, JSON and logs) and paired-8d.txt when both were measured. The
# AVB's optimizer state (~20 MB) cannot come back, so a run cut by its --time-limit goes on only approximately
# (`--init-from`, fresh Adam moments), and its epochs are then stated as two runs.
# Arguments: device, epochs (default 49), test images (--limit; default all), L_k images (--lk-images; default all),
# k (default 5000), then flags passed to train as they are (the rehearsal's --max-batches 2).
set -uo pipefail
DEV=${1:-cuda}; EPOCHS=${2:-49}; LIMIT=${3:-}; LK=${4:-}; K=${5:-5000}; shift $(( $# < 5 ? $# : 5 )); EXTRA=("$@")
FINAL=${OUT:-/tmp/avb8-gpu-out}; mkdir -p "$FINAL"
WORK=$(mktemp -d /tmp/avb8-work.XXXX)
PY=python3; [ "$DEV" = cpu ] && [ -x .venv/bin/python ] && PY=.venv/bin/python
export PYTHONUNBUFFERED=1
DATA=gpu/data; [ -d "$DATA/mnist" ] || DATA=../shared/data
START=$(date +%s)
RUNS=(avb8-mnist-vae avb8-mnist)
NETS=(--set 'conv=[32,64,32]' --set 'deconv=[64,64,32]' --set 'adversary_conv=[16,32,32]'
      --set 'adversary_hidden=[512,512,512]' --set z_size=8 --set eps_dim=32 --set n_basis=16)
declare -A OBJECTIVE=([avb8-mnist-vae]="--set objective=vae" [avb8-mnist]="--set objective=avb --set contrast=full")
declare -A MINUTES=([avb8-mnist-vae]=2 [avb8-mnist]=4)  # each run's --time-limit: GPU speed unmeasured
pack() {
  for run in "${RUNS[@]}"; do
    [ -d "$WORK/$run" ] && tar -cf "$FINAL/$run.tar" -C "$WORK" --exclude 'optimizer*.safetensors' \
        --exclude best --exclude previews "$run"
  done
}
trap pack EXIT
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
measured=0
for run in "${RUNS[@]}"; do
  mkdir -p "$WORK/$run"
  # shellcheck disable=SC2086  # OBJECTIVE's flags split on purpose
  $PY -m training train --model avb --dataset mnist --data-dir "$DATA" --out "$WORK/$run" "${NETS[@]}" \
      ${OBJECTIVE[$run]} --batch-size 128 --lr-stages '[[39, 2e-4], [100, 1e-4]]' --epochs "$EPOCHS" --seed 0 \
      --device "$DEV" --time-limit "${MINUTES[$run]}" "${EXTRA[@]}" > "$WORK/$run/train.log" 2>&1
  echo "$run: train rc $?, $(( $(date +%s) - START )) s"; tail -n 3 "$WORK/$run/train.log"
  epoch=$($PY -c "import json, sys; print(json.load(open(sys.argv[1]))['progress']['epoch'])" \
          "$WORK/$run/last/progress.json" 2>/dev/null || echo 0)
  if [ "$epoch" != "$EPOCHS" ]; then
    echo "$run: stopped at epoch $epoch of $EPOCHS: not measured"; continue
  fi
  $PY -m training evaluate "$WORK/$run/last" --k "$K" --chunk 5000 --data-dir "$DATA" --device "$DEV" \
      --time-limit 3 ${LIMIT:+--limit $LIMIT} ${LK:+--lk-images $LK} --per-image "$WORK/$run/per-image.csv" \
      --json "$WORK/$run/evaluation.json" > "$WORK/$run/evaluate.log" 2>&1
  rc=$?
  echo "$run: evaluate rc $rc, $(( $(date +%s) - START )) s"; tail -n 3 "$WORK/$run/evaluate.log"
  [ $rc -eq 0 ] && ! grep -q '"partial_L' "$WORK/$run/evaluation.json" && measured=$((measured + 1))
done
if [ $measured -eq 2 ]; then
  $PY -m training paired "$WORK/avb8-mnist-vae/per-image.csv" "$WORK/avb8-mnist/per-image.csv" \
      | tee "$FINAL/paired-8d.txt"
else
  echo "not both measured: no paired difference"
fi
echo "total $(( $(date +%s) - START )) s"
