#!/bin/bash
# Second call on the same warm device: the five text runs of burst.sh resumed by the same commands (their last/
# checkpoints, optimizer included, were still on the device) for TRAIN_MIN more minutes; then the same evaluation
# and the same rule (the tied CNN with the best validation bound ships and is evaluated at k = 500).
set -u
TMIN=${1:-4}; DEV=cuda; D=gpu/data; PY=python3; START=$(date +%s)
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
mkdir -p logs2
TEXT="--model textvae --dataset ptb --data-dir $D --batch-size 32 --optimizer adam --clip 5 --lr-decay-patience 2
  --patience 6 --epochs 100 --kl-warmup 3945 --set tie_weights=true --set dropout_out=0.5 --preview-every 1000"
text() { local name=$1; shift
  $PY -m training train $TEXT "$@" --device $DEV --time-limit $TMIN --out runs/$name > logs2/train-$name.log 2>&1
  echo "$name trained: rc $?, $(( $(date +%s) - START )) s"; }
text lm --set decoder=lm &
text lstm --set decoder=lstm &
text cnn-small --set preset=small --set free_bits=0.1 &
text cnn-medium --set preset=medium --set free_bits=0.1 &
text cnn-large --set preset=large --set free_bits=0.1 &
wait
BEST=$($PY -c "
import json, pathlib
b = {p.parts[1]: json.loads(p.read_text())['metrics']['best_val_nll_bound'] for p in pathlib.Path('runs').glob('cnn-*/best/checkpoint.json') if 'untied' not in p.parts[1]}
print(min(b, key=b.get))")
echo "best CNN by validation: $BEST"
ev() { local name=$1 k=$2; shift 2
  timeout 100 $PY -m training evaluate runs/$name/best --k $k --chunk 2000 --data-dir $D --device $DEV \
      --json logs2/eval-$name-k$k.json "$@" > logs2/eval-$name-k$k.log 2>&1; echo "$name k $k: rc $?, $(( $(date +%s) - START )) s"; }
ev lm 1 & ev lstm 50 & for p in small medium large; do ev cnn-$p 50 & done
ev $BEST 500 --per-sentence logs2/sentences-$BEST.csv &
wait
for r in lm lstm cnn-small cnn-medium cnn-large; do cp runs/$r/metrics.jsonl logs2/metrics-$r.jsonl; cp runs/$r/best/checkpoint.json logs2/ckpt-$r.json; tail -n 1 logs2/train-$r.log; done
grep -h '"nll"\|"ppl"' logs2/eval-*.json
rm -rf ship2; mkdir ship2; cp -r runs/$BEST/best ship2/textvae; rm -f ship2/textvae/optimizer*.safetensors
tar cf - ship2 | split -b 15M - $OUT/ship2.tar.part-; tar czf $OUT/logs2.tgz logs2; echo "total $(( $(date +%s) - START )) s"
