#!/bin/bash
# Issue 22's 8-d pair on a lent GPU: both runs were trained to epoch 49 on the CPU (cpu.sh, by the recipe fixed in
# docs/experiments/2026-12-06-avb-all-test.md), so what is left is their measurement, fixed in the same file before
# any 8-d image was read: −L_5000 with r_α as AVB's proposal on all 10,000 test images (binarised once, seed 0; the
# L_k noise from seed 0), going on from the journals the CPU fills under all/, then the paired difference AVB − VAE.
# It is the 32-d pair's script (2026-12-04-avb/gpu-eval.sh) on this pair's checkpoints and journals.
# (Until 2026-12-06's twenty-third session this script trained the pair too; the training is done.)
# Rehearsed 2026-12-06 (twenty-third session) on the CPU only, from no journal and then from its own:
#   RESUME=/nonexistent OUT=/tmp/avb8-rehearsal bash docs/experiments/2026-12-06-avb8/gpu.sh cpu 4 2 50
#
# Before `run` (repository root): the tree must stay under 64 MiB: move checkpoints/ aside and copy MNIST:
#   mkdir -p /work/ckpt-hold gpu/data && mv checkpoints/* /work/ckpt-hold/ && cp -r ../shared/data/mnist gpu/data/
#   run: command "bash docs/experiments/2026-12-06-avb8/gpu.sh cuda", carry ["gpu"], timeout_s 540
#   then: mv /work/ckpt-hold/* checkpoints/
# Each evaluation stops itself after $MINUTES (default 3.5; GPU speed unmeasured) and keeps every image it measured
# with the random stream's state; a cut one goes on from its journal on the CPU or the next GPU:
#   tar -xf OUT/avb8.tar -C docs/experiments/2026-12-06-avb8/all --wildcards '*per-image.csv*'
# What comes back: $OUT/avb8.tar (journals, JSON, logs, versions) and $OUT/paired-8d.txt when both finished.
# Arguments: device, test images (--limit; default all), L_k images (--lk-images; default all), k (default 5000).
HERE=docs/experiments/2026-12-06-avb8
AVB=$HERE/avb8-mnist/last VAE=$HERE/avb8-mnist-vae/last RESUME=${RESUME:-$HERE/all} PACK=avb8 PAIRED=paired-8d.txt \
  exec bash docs/experiments/2026-12-04-avb/gpu-eval.sh "$@"
