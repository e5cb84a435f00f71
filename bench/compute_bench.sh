#!/usr/bin/env bash
# bf16 compute against fp32 compute and bf16 storage (docs/BENCHMARKS.md), measured in one run
# beside this CPU's GEMM rates: 2 local ranks, ZeRO stages 0, 2 and 3, at the anchor shape
# (GPT 4 x 256, context 128, micro-batch 8, byte vocabulary) and at GPT-2 124M (context 512,
# micro-batch 1). Modes:
#   fp32     the config trains fp32
#   storage  bf16.enabled, compute forced to fp32 (DS_COMPUTE_DTYPE=fp32): bf16 values and wire
#   compute  bf16.enabled, compute forced to bf16 (DS_COMPUTE_DTYPE=bf16): bf16 GEMMs
# Prints tokens/s, model FLOP utilisation against the bf16 GEMM rate, the engine's model-state
# bytes per rank and peak RSS.
#   bench/compute_bench.sh            # both shapes
#   bench/compute_bench.sh anchor     # one
set -euo pipefail
cd "$(dirname "$0")/.."
shapes=("$@")
[ ${#shapes[@]} -gt 0 ] || shapes=(anchor gpt2)
steps=${STEPS:-4}
gemm=$(build/bench/gemm_bench)
echo "$gemm"
peak=$(echo "$gemm" | sed -E 's/.* bf16 ([0-9]+) GFLOP.*/\1/')
for shape in "${shapes[@]}"; do
  case $shape in
    anchor) args=(--layers 4 --heads 4 --width 256 --vocab 256 --context 128 --tokens 128 --micro 8) ;;
    gpt2) args=(--layers 12 --heads 12 --width 768 --vocab 50257 --context 512 --tokens 512 --micro 1) ;;
    *) echo "compute_bench: unknown shape '$shape' (anchor or gpt2)" >&2; exit 2 ;;
  esac
  for stage in 0 2 3; do
    for mode in fp32 storage compute; do
      case $mode in
        fp32) env=(DS_COMPUTE_DTYPE=auto); bf16=0 ;;
        storage) env=(DS_COMPUTE_DTYPE=fp32); bf16=1 ;;
        compute) env=(DS_COMPUTE_DTYPE=bf16); bf16=1 ;;
      esac
      echo "== $shape, stage $stage, $mode"
      env "${env[@]}" build/apps/ds-launch --num_procs 2 --no_prefix build/bench/zero_bench --stage "$stage" \
        --bf16 "$bf16" --steps "$steps" --peak-gflops "$peak" "${args[@]}" 2>&1 |
        grep -E "per rank:|peak RSS|tokens/s|error" || true
    done
  done
done
