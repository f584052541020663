#!/bin/bash
# Issue 22's protocol on a lent GPU: −L_5000 with r_α(z | x) as the proposal on all 10,000 test images (binarised
# once, seed 0; the L_k noise from seed 0, as every CPU evaluation) for the shipped avb-mnist and its VAE baseline,
# each image's value kept, then the paired difference AVB − VAE with its standard error. On a CPU an image at
# k = 5,000 (a conv decoder 5,000 times) took 2.80 s on two threads before fcec18a and 1.33 s after (Intel VM,
# bench/README.md); the CPU fills the same journals across sessions (docs/experiments/2026-12-06-avb-all-test.md),
# and this script goes on from them.
# Prepared 2026-12-05 and rehearsed on the CPU only (`... gpu-eval.sh cpu 20 4 50`): no GPU was lent. Rehearsed
# again in the seventeenth session with the journals: a second run over the same $OUT resumed both finished
# journals and printed the same paired difference. 2026-12-06: it packs what it writes into one tar, since the
# device returns at most eight files (it wrote ten); rehearsed so (`RESUME=/nonexistent ... cpu 20 4 50`). In the
# twenty-third session it took the pair as settings (below), for the 8-d gpu.sh; rehearsed with its defaults
# (`RESUME=/nonexistent ... cpu 4 2 50`: both rc 0, avb32.tar and paired.txt) and through gpu.sh.
#
# Before `run` (repository root): move every other checkpoint aside so the tree stays under 64 MiB, copy MNIST:
#   mkdir -p /work/ckpt-hold gpu/data && for d in checkpoints/*; do case $d in checkpoints/avb-mnist|\
#     checkpoints/avb-mnist-vae) ;; *) mv "$d" /work/ckpt-hold/;; esac; done && cp -r ../shared/data/mnist gpu/data/
#   run: command "bash docs/experiments/2026-12-04-avb/gpu-eval.sh cuda", carry ["gpu"], timeout_s 540
# Each evaluation stops itself after 3.5 minutes (--time-limit; GPU speed unmeasured: 50 M decoder passes a model)
# and keeps every image it measured, with the random stream's state (avb32.tar below); the paired difference is
# taken only when both finished. A cut one goes on from those files with --resume, on the CPU or the next GPU, to
# the same samples (the same --chunk 5000 on both: the journal refuses another; each device's own last float bits):
#   tar -xf OUT/avb32.tar -C docs/experiments/2026-12-04-avb/all --wildcards '*per-image.csv*'
#   .venv/bin/python -m training evaluate \
#     checkpoints/avb-mnist --k 5000 --chunk 5000 --data-dir ../shared/data --resume --time-limit 100 \
#     --per-image docs/experiments/2026-12-04-avb/all/avb-mnist-per-image.csv
# A $RESUME folder holding such files (in the tree, or carried) is copied in first, so the GPU goes on from them.
#   then: mv /work/ckpt-hold/* checkpoints/
# Arguments: device, test images (--limit; default all), L_k images (--lk-images; default all), k (default 5000).
# Another pair (docs/experiments/2026-12-06-avb8/gpu.sh, the 8-d one) sets AVB and VAE (checkpoint folders; a run's
# last/ is named by its run), RESUME (its journals), PACK (the tar's name), PAIRED (the paired file's) and MINUTES.
# What comes back: $OUT/$PACK.tar (avb32.tar: the journals, JSON, logs and versions; one file, as the device returns
# at most eight) and $OUT/$PAIRED (paired.txt) when both finished. Unpack with `tar -xf OUT/avb32.tar -C DIR`.
set -uo pipefail
DEV=${1:-cuda}; LIMIT=${2:-}; LK=${3:-}; K=${4:-5000}
FINAL=${OUT:-/tmp/avb-gpu-out}; mkdir -p "$FINAL"
AVB=${AVB:-checkpoints/avb-mnist}; VAE=${VAE:-checkpoints/avb-mnist-vae}; PACK=${PACK:-avb32}
PAIRED=${PAIRED:-paired.txt}
OUT=$(mktemp -d /tmp/$PACK-work.XXXX)  # the working files, packed into $FINAL/$PACK.tar on any exit
trap 'tar -cf "$FINAL/$PACK.tar" -C "$OUT" .' EXIT
PY=python3; [ "$DEV" = cpu ] && [ -x .venv/bin/python ] && PY=.venv/bin/python
export PYTHONUNBUFFERED=1
DATA=gpu/data; [ -d "$DATA/mnist" ] || DATA=../shared/data
START=$(date +%s)
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee "$OUT/versions.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >> "$OUT/versions.txt" 2>/dev/null
RESUME=${RESUME:-docs/experiments/2026-12-04-avb/all}
[ -d "$RESUME" ] && cp "$RESUME"/*per-image.csv* "$OUT"/ 2>/dev/null
name() { local d=${1%/}; [ "$(basename "$d")" = last ] && d=$(dirname "$d"); basename "$d"; }  # run/last -> run
ok=1
for ckpt in "$AVB" "$VAE"; do
  m=$(name "$ckpt")
  $PY -m training evaluate "$ckpt" --k "$K" --chunk 5000 --data-dir $DATA --device "$DEV" \
      --time-limit "${MINUTES:-3.5}" \
      ${LIMIT:+--limit $LIMIT} ${LK:+--lk-images $LK} --per-image "$OUT/$m-per-image.csv" --resume \
      --json "$OUT/$m.json" > "$OUT/$m.log" 2>&1
  rc=$?
  echo "$m: rc $rc, $(( $(date +%s) - START )) s"; tail -n 4 "$OUT/$m.log"
  [ $rc -eq 0 ] && ! grep -q '"partial_L' "$OUT/$m.json" || ok=0
done
if [ $ok -eq 1 ]; then
  $PY -m training paired "$OUT/$(name "$VAE")-per-image.csv" "$OUT/$(name "$AVB")-per-image.csv" \
      | tee "$FINAL/$PAIRED"
else
  echo "an evaluation did not finish: no paired difference"
fi
echo "total $(( $(date +%s) - START )) s"
