#!/bin/bash
# GPU burst (2026-12-04, sixth session): the Penn Treebank table of issue 20 at width 256 (language model, LSTM-VAE,
# CNN-VAE small / medium / large) and the Neural Statistician at the paper's widths (issue 19), trained side by side
# for TRAIN_MIN minutes each, then evaluated on test. Rules fixed before the run: every model ships or is reported at
# its best validation epoch; the CNN size with the best validation bound is the one evaluated at the protocol's
# k = 500 (the others at k = 50, the LM exactly) and the one shipped as textvae-ptb. Tied embeddings keep a
# width-256 text VAE under the 30 MB a checkpoint; one untied medium run measures what tying does.
# Usage: gpu/burst.sh DEVICE TRAIN_MIN EVAL_S [MAX_BATCHES] [LIMIT]   (on the device: cuda 6 150)
set -u
DEV=${1:-cuda}; TMIN=${2:-6}; ESEC=${3:-150}; MAXB=${4:-}; LIMIT=${5:-}
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT" runs logs
PY=${PY:-python3}
D=gpu/data
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
$PY -c "import torch; print(torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())"
nvidia-smi -L 2>/dev/null
START=$(date +%s)

TEXT="--model textvae --dataset ptb --data-dir $D --batch-size 32 --optimizer adam --clip 5 --lr-decay-patience 2
  --patience 6 --epochs 100 --kl-warmup 3945 --set tie_weights=true --set dropout_out=0.5 --preview-every 1000"
text() {  # name, then --set overrides
  local name=$1; shift
  $PY -m training train $TEXT "$@" --device $DEV --time-limit $TMIN ${MAXB:+--max-batches $MAXB} --out runs/$name \
      > logs/train-$name.log 2>&1
  echo "$name trained: rc $?, $(( $(date +%s) - START )) s"
}
text lm --set decoder=lm &
text lstm --set decoder=lstm &
text cnn-small --set preset=small --set free_bits=0.1 &
text cnn-medium --set preset=medium --set free_bits=0.1 &
text cnn-large --set preset=large --set free_bits=0.1 &
text cnn-medium-untied --set preset=medium --set free_bits=0.1 --set tie_weights=false &  # what tying does
( $PY -m training train --model statistician --dataset omniglot --data-dir $D --batch-size 32 --epochs 300 \
      --patience 30 --kl-warmup 1000 --seed 0 --preview-every 5 --device $DEV --time-limit $TMIN \
      ${MAXB:+--max-batches $MAXB} --out runs/statistician > logs/train-statistician.log 2>&1
  echo "statistician trained: rc $?, $(( $(date +%s) - START )) s" ) &
wait

BEST=$($PY - <<'EOF'
import json, pathlib
bounds = {}
for p in sorted(pathlib.Path("runs").glob("cnn-*/best/checkpoint.json")):  # tied only: untied is over 30 MB
    if p.parts[1].endswith("untied"):
        continue
    bounds[p.parts[1]] = json.loads(p.read_text())["metrics"]["best_val_nll_bound"]
print(min(bounds, key=bounds.get) if bounds else "none")
EOF
)
echo "best CNN by validation: $BEST"
ev() {  # name k, then evaluate flags
  local name=$1 k=$2; shift 2
  timeout $ESEC $PY -m training evaluate runs/$name/best --k $k --data-dir $D --device $DEV ${LIMIT:+--limit $LIMIT} \
      --json logs/eval-$name-k$k.json "$@" > logs/eval-$name-k$k.log 2>&1
  echo "$name evaluated at k $k: rc $?, $(( $(date +%s) - START )) s"
}
ev lm 1 &
ev lstm 50 --chunk 5000 &
for p in small medium large medium-untied; do ev cnn-$p 50 --chunk 5000 & done
[ "$BEST" != none ] && ev $BEST 500 --chunk 5000 --per-sentence logs/sentences-$BEST.csv &
ev statistician 1 ${LIMIT:+--episodes 20} --pictures logs/statistician-pictures &
wait

for r in lm lstm cnn-small cnn-medium cnn-large cnn-medium-untied statistician; do
  cp runs/$r/metrics.jsonl logs/metrics-$r.jsonl 2>/dev/null; cp runs/$r/best/checkpoint.json logs/ckpt-$r.json 2>/dev/null
  tail -n 2 logs/train-$r.log
done
grep -h '"nll"\|"ppl"\|"kl"' logs/eval-*.json
mkdir -p ship
[ "$BEST" != none ] && cp -r runs/$BEST/best ship/textvae && rm -f ship/textvae/optimizer*.safetensors
[ -d runs/statistician/best ] && cp -r runs/statistician/best ship/statistician && rm -f ship/statistician/optimizer*.safetensors
cp runs/statistician/*.png logs/ 2>/dev/null
tar cf - ship | split -b 15M - $OUT/ship.tar.part-
tar czf $OUT/logs.tgz logs
ls -la $OUT
echo "total $(( $(date +%s) - START )) s"
