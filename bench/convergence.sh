#!/usr/bin/env bash
# Does a variant converge like the baseline? ds-train on tinyshakespeare, GPT 6 x 384, context
# 256, the same seed, data order and config except what is compared. 2 ranks, ZeRO stage 2.
#   COMPARE=bf16 (default): fp32 vs bf16.enabled with the compute forced to bf16
#     (DS_COMPUTE_DTYPE=bf16, so the run means the same on any CPU; on one without native bf16
#     LibTorch converts, with the same fp32 accumulation).
#   COMPARE=sparse: full causal attention vs a causal `fixed` sparse_attention layout (block
#     32, local windows of 4 blocks = 128 tokens, 1 global block per window).
#   COMPARE=lamb: AdamW (lr 1e-3) vs Lamb (LAMB_LR, default 1e-2: its trust ratio makes lr the
#     relative step of each tensor, so it wants a larger lr than Adam's), same schedule shape.
# Prints both held-out losses and their relative difference, and draws both curves in one SVG.
#   bench/convergence.sh [OUT_DIR]        # STEPS=1000 BATCH=4 COMPARE=bf16 by default
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench-convergence}
steps=${STEPS:-1000}
batch=${BATCH:-4}
data=${DATA:-../shared/data/tinyshakespeare.txt}
mkdir -p "$out"
compare=${COMPARE:-bf16}
case "$compare" in
  bf16) modes=(fp32 bf16) names=("fp32" "bf16 compute") ;;
  sparse) modes=(full sparse) names=("full attention" "fixed sparse attention") ;;
  lamb) modes=(adamw lamb) names=("AdamW" "Lamb") ;;
  *) echo "convergence: COMPARE must be bf16, sparse or lamb, got '$compare'" >&2; exit 2 ;;
esac
sparse_section='"sparse_attention": {"mode": "fixed", "block": 32, "num_local_blocks": 4, "num_global_blocks": 1, "attention": "unidirectional"},'
lamb_lr=${LAMB_LR:-1e-2}
config() {  # config BF16(true|false) [SPARSE(true)] [OPTIMIZER(AdamW|Lamb)]
  local type=${3:-AdamW} lr=1e-3
  [ "$type" = Lamb ] && lr=$lamb_lr
  cat <<EOF
{"train_batch_size": $batch, "train_micro_batch_size_per_gpu": $((batch / 2)), "seed": 1234,
 "optimizer": {"type": "$type", "params": {"lr": $lr, "betas": [0.9, 0.98], "weight_decay": 0.01}},
 "scheduler": {"type": "WarmupDecayLR", "params": {"warmup_min_lr": 0.0, "warmup_max_lr": $lr,
               "warmup_num_steps": 100, "total_num_steps": $steps}},
 "gradient_clipping": 1.0, "steps_per_print": 100, ${2:+$sparse_section}
 "zero_optimization": {"stage": 2}, "bf16": {"enabled": $1}}
EOF
}
echo "convergence: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $steps steps, batch $batch, $compare"
for mode in "${modes[@]}"; do
  case "$mode" in
    fp32|full|adamw) config false > "$out/$mode.json"; env=(DS_COMPUTE_DTYPE=auto) ;;
    lamb) config false "" Lamb > "$out/$mode.json"; env=(DS_COMPUTE_DTYPE=auto) ;;
    bf16) config true > "$out/$mode.json"; env=(DS_COMPUTE_DTYPE=bf16) ;;
    sparse) config false true > "$out/$mode.json"; env=(DS_COMPUTE_DTYPE=auto) ;;
  esac
  env "${env[@]}" build/apps/ds-launch --num_procs 2 build/apps/ds-train --config "$out/$mode.json" --data "$data" \
    --n-layer 6 --n-head 6 --d-model 384 --seq-len 256 --steps "$steps" --eval-interval 100 --eval-examples 64 \
    --metrics "$out/$mode.csv" --plot "" > "$out/$mode.log" 2>&1
  # held-out points as CSV for the chart
  { echo "step,heldout"; sed -nE 's/.*ds-train: step ([0-9]+) held-out loss ([0-9.]+).*/\1,\2/p' "$out/$mode.log"; } > "$out/$mode-heldout.csv"
  grep -E "precision|attention|tokens/s" "$out/$mode.log" | tail -3
done
m0=${modes[0]} m1=${modes[1]} n0=${names[0]} n1=${names[1]}
a=$(tail -1 "$out/$m0-heldout.csv" | cut -d, -f2)
b=$(tail -1 "$out/$m1-heldout.csv" | cut -d, -f2)
echo "held-out loss at step $steps: $n0 $a, $n1 $b, difference $(echo "($b - $a) / $a * 100" | bc -l | xargs printf '%+.2f') %"
build/bench/plot_runs --out "$out/convergence.svg" --y loss \
  --title "ds-train, tinyshakespeare, GPT 6 x 384, context 256: $n0 vs $n1" \
  "$n0 train=$out/$m0.csv:step:loss" "$n1 train=$out/$m1.csv:step:loss" \
  "$n0 held-out=$out/$m0-heldout.csv:step:heldout" "$n1 held-out=$out/$m1-heldout.csv:step:heldout"
echo "chart: $out/convergence.svg"
