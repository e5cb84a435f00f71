#!/usr/bin/env bash
# The longest sequence one GPT block (d_model 256, 4 heads of 64) trains (forward + backward,
# batch 1) within a memory budget, dense attention vs the block kernels (exact causal, and a
# bslongformer layout): each length runs in its own process under a hard address-space limit
# a little above the budget, lengths grow by 1.5x from 1024 (rounded to the block), and a run
# counts when it finishes with peak RSS within the budget. docs/BENCHMARKS.md.
#   bench/longest_sequence.sh            # BUDGET_MIB=8192 PATHS="dense exact sparse"
set -euo pipefail
cd "$(dirname "$0")/.."
budget=${BUDGET_MIB:-8192}
grep -m1 "model name" /proc/cpuinfo
for path in ${PATHS:-dense exact sparse}; do
  best=0 t=1024 line=""
  while :; do
    # A little more address space than the budget: the allocator maps more than it touches.
    out=$( (ulimit -v $(( (budget + 2048) * 1024 )); build/bench/gpt_layer_bench --seq $t --attention "$path") 2>&1 ) || break
    rss=$(sed -n 's/.*peak RSS \([0-9.]*\) MiB.*/\1/p' <<<"$out")
    [ -n "$rss" ] || break
    awk -v r="$rss" -v b="$budget" 'BEGIN { exit !(r <= b) }' || break
    best=$t line=$out
    echo "  $out"
    t=$(( (t * 3 / 2 + 63) / 64 * 64 ))
  done
  echo "$path: longest within $budget MiB: $best tokens"
  [ -n "$line" ] && echo "  $line"
done
