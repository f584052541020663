#!/bin/bash
# Issue 22's 8-d pair on a CPU, across sessions: one run of the recipe fixed in
# docs/experiments/2026-12-06-avb-all-test.md (the shipped 32-d pair's nets and schedule at z_size 8, eps_dim 32,
# 16 basis noises; 49 epochs, the last one measured, nothing selected), on one thread, for MINUTES of this session.
# A session's background processes die with it, so the run's last/ (weights, optimizer state, progress) and its
# metrics.jsonl are kept here, under docs/experiments/2026-12-06-avb8/<run>/, to be committed; the next session's
# same command copies them back into runs/<run>/ and goes on (the train command resumes a run folder with last/).
# When the run reaches its last epoch its optimizer state is dropped from the kept copy, and its loss curves and
# last prior samples are kept beside it.
#
#   bash docs/experiments/2026-12-06-avb8/cpu.sh avb8-mnist-vae 40     # then git add the run's folder here
#   bash docs/experiments/2026-12-06-avb8/cpu.sh avb8-mnist 40
# Rehearsed 2026-12-06 (twenty-second session) as two sessions, runs/ removed between them:
#   KEEP=/tmp/avb8-keep RUNS=/tmp/avb8-runs EPOCHS=2 bash docs/experiments/2026-12-06-avb8/cpu.sh avb8-mnist 0 \
#     --max-batches 2      (0 minutes: one epoch); the second call went on from the kept epoch 1 to the same
#   epoch-2 bounds as a run straight through (train 569.78, validation 571.99) and dropped the optimizer state.
set -euo pipefail
RUN=${1:?run: avb8-mnist or avb8-mnist-vae}; MINUTES=${2:?minutes for this session}; shift 2
EPOCHS=${EPOCHS:-49}
KEEP=${KEEP:-docs/experiments/2026-12-06-avb8}/$RUN
OUTDIR=${RUNS:-runs}/$RUN
NETS=(--set 'conv=[32,64,32]' --set 'deconv=[64,64,32]' --set 'adversary_conv=[16,32,32]'
      --set 'adversary_hidden=[512,512,512]' --set z_size=8 --set eps_dim=32 --set n_basis=16)
case $RUN in
  avb8-mnist) OBJECTIVE=(--set objective=avb --set contrast=full) ;;
  avb8-mnist-vae) OBJECTIVE=(--set objective=vae) ;;
  *) echo "unknown run $RUN (avb8-mnist or avb8-mnist-vae)" >&2; exit 2 ;;
esac
if [ -d "$KEEP/last" ] && [ ! -d "$OUTDIR/last" ]; then  # a new session: go on from the kept copy
  mkdir -p "$OUTDIR" && cp -r "$KEEP/last" "$KEEP/metrics.jsonl" "$OUTDIR/"
fi
mkdir -p "$KEEP" "$OUTDIR"
echo "$(date -u +%FT%TZ) $(hostname) $(lscpu | sed -n 's/^Model name: *//p' | head -1): $MINUTES min" \
  >> "$KEEP/train.log"
OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONUNBUFFERED=1 .venv/bin/python -m training train --model avb \
  --dataset mnist --data-dir ../shared/data --out "$OUTDIR" "${NETS[@]}" "${OBJECTIVE[@]}" --batch-size 128 \
  --lr-stages '[[39, 2e-4], [100, 1e-4]]' --epochs "$EPOCHS" --seed 0 --time-limit "$MINUTES" "$@" 2>&1 \
  | tee "$OUTDIR/output.log"
tr '\r' '\n' < "$OUTDIR/output.log" | grep -v -e '%|' -e '^ *$' >> "$KEEP/train.log"  # the log without its bars
rm -rf "$KEEP/last" && cp -r "$OUTDIR/last" "$OUTDIR/metrics.jsonl" "$KEEP/"
epoch=$(.venv/bin/python -c "import json, sys; print(json.load(open(sys.argv[1]))['progress']['epoch'])" \
        "$KEEP/last/progress.json")
if [ "$epoch" = "$EPOCHS" ]; then  # the run is over: no optimizer state to carry; its curves and last samples kept
  rm -f "$KEEP"/last/optimizer*.safetensors
  cp "$OUTDIR/loss-curves.png" "$KEEP/" && cp "$OUTDIR/previews/samples-epoch$(printf %04d "$epoch").png" \
    "$KEEP/samples-epoch$epoch.png"
fi
echo "$RUN: epoch $epoch of $EPOCHS kept in $KEEP" | tee -a "$KEEP/train.log"
