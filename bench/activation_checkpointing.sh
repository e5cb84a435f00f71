#!/usr/bin/env bash
# Activation checkpointing (docs/BENCHMARKS.md): GPT-2 124M (12 x 768, vocabulary 50257) at
# context 1024, micro-batch 1, with every block recomputed in the backward against none:
# peak RSS, the activation estimate (GptConfig::activation_bytes) and the median step time,
# measured in one run. 1 rank at stage 0, and 2 ranks at stage 3 (where each recomputed
# block is gathered again: the gather count is printed).
#   bench/activation_checkpointing.sh            # STEPS=4 by default; RUNS="1 0" for one case
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${STEPS:-4}
shape=(--layers 12 --heads 12 --width 768 --vocab 50257 --context 1024 --tokens 1024 --micro 1 --steps "$steps")
grep -m1 "model name" /proc/cpuinfo
runs=("1 0" "2 3")
[ -z "${RUNS:-}" ] || runs=("$RUNS")  # e.g. RUNS="1 0": one rank, stage 0 only
for run in "${runs[@]}"; do
  read -r ranks stage <<<"$run"
  for blocks in 0 12; do
    echo "== $ranks rank(s), stage $stage, $blocks of 12 blocks recomputed"
    build/apps/ds-launch --num_procs "$ranks" --no_prefix build/bench/zero_bench --stage "$stage" \
      --checkpoint-blocks "$blocks" "${shape[@]}" 2>&1 | grep -E "peak RSS|grew|step time|gathers|error" || true
  done
done
