#!/usr/bin/env bash
# Ulysses sequence parallelism against one rank and against data parallelism, in one run:
# ds-train on tinyshakespeare, GPT 2 x 256 (4 heads), micro-batch 1, exact causal attention,
# at long contexts; peak RSS per rank and tokens/s (steps 2 on). docs/BENCHMARKS.md.
#   bench/sequence_parallel.sh               # CONTEXTS="2048 8192" STEPS=5
set -euo pipefail
cd "$(dirname "$0")/.."
data=${DATA:-../shared/data/tinyshakespeare.txt}
steps=${STEPS:-5}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
grep -m1 "model name" /proc/cpuinfo
printf "%-8s %-22s %12s %12s %10s\n" context layout "peak/rank" tokens/s "s/step"
for ctx in ${CONTEXTS:-2048 8192}; do
  for layout in "1 1" "2 1" "2 2"; do
    read -r ranks sp <<<"$layout"
    batch=$((ranks / sp))
    echo "{\"train_batch_size\": $batch, \"train_micro_batch_size_per_gpu\": 1, \"sequence_parallel_size\": $sp,
           \"optimizer\": {\"type\": \"AdamW\", \"params\": {\"lr\": 3e-4}}}" >"$work/c.json"
    name="$ranks rank(s)"
    [ "$ranks" -gt 1 ] && name=$([ "$sp" -gt 1 ] && echo "2 ranks, sequence 2" || echo "2 ranks, data 2")
    build/apps/ds-launch --num_procs "$ranks" --no_prefix build/apps/ds-train --config "$work/c.json" --data "$data" \
      --n-layer 2 --n-head 4 --d-model 256 --seq-len "$ctx" --steps "$steps" --plot "" --eval-interval 0 \
      --eval-examples 1 --metrics "$work/m.csv" >"$work/out.txt" 2>&1 || { tail -3 "$work/out.txt"; exit 1; }
    rss=$(sed -n 's/.*peak RSS \([0-9.]* [KMG]iB\) per rank.*/\1/p' "$work/out.txt" | tail -1)
    tps=$(sed -n "s/.* \([0-9]*\) tokens\/s.*/\1/p" "$work/out.txt" | tail -1)
    sps=$(python3 -c "import csv,statistics,sys; r=list(csv.DictReader(open('$work/m.csv'))); print(f'{statistics.median(float(x[\"ms_per_step\"]) for x in r[1:])/1e3:.2f}')")
    printf "%-8s %-22s %12s %12s %10s\n" "$ctx" "$name" "$rss" "$tps" "$sps"
  done
done
