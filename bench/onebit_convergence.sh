#!/usr/bin/env bash
# Do 1-bit Adam and 0/1 Adam converge like Adam? ds-train on tinyshakespeare, the same seed,
# data order, model, learning-rate schedule and steps; only the optimizer differs: Adam,
# OneBitAdam with freeze_step at 15% of the steps (ZeRO stage 0, and stage 2), and ZeroOneAdam
# with var_freeze_step there and local steps whose interval doubles every 10% of the steps
# (up to 16). RANKS ranks (default 2). FAMILY=lamb: Lamb (no bias correction) against
# OneBitLamb with freeze_step at 15% (stage 0, and stage 2), at Lamb's lr of 1e-2.
# Prints the held-out losses and their differences to the baseline's, and draws the curves in one SVG.
#   bench/onebit_convergence.sh [OUT_DIR]       # RANKS=2 STEPS=600 BATCH=16 FAMILY=adam by default
set -euo pipefail
cd "$(dirname "$0")/.."
ranks=${RANKS:-2}
family=${FAMILY:-adam}
out=${1:-bench-onebit-$family-$ranks}
steps=${STEPS:-600}
batch=${BATCH:-16}
freeze=${FREEZE:-$((steps * 15 / 100))}
data=${DATA:-../shared/data/tinyshakespeare.txt}
model=(--n-layer "${LAYERS:-4}" --n-head 4 --d-model "${WIDTH:-192}" --seq-len "${CONTEXT:-128}")
mkdir -p "$out"
config() {  # config OPTIMIZER STAGE
  local params="\"lr\": $lr, \"betas\": [0.9, 0.98], \"weight_decay\": 0.01"
  case "$1" in *Lamb) params="$params, \"bias_correction\": false" ;; esac
  case "$1" in OneBit*) params="$params, \"freeze_step\": $freeze" ;; esac
  [ "$1" = ZeroOneAdam ] && params="$params, \"var_freeze_step\": $freeze, \"local_step_scaler\": $((steps / 10))"
  cat <<JSON
{"train_batch_size": $batch, "train_micro_batch_size_per_gpu": $((batch / ranks)), "seed": 1234,
 "optimizer": {"type": "$1", "params": {$params}},
 "scheduler": {"type": "WarmupDecayLR", "params": {"warmup_min_lr": 0.0, "warmup_max_lr": $lr,
               "warmup_num_steps": $((steps / 10)), "total_num_steps": $steps}},
 "gradient_clipping": 1.0, "steps_per_print": 100, "zero_optimization": {"stage": $2}}
JSON
}
if [ "$family" = lamb ]; then
  lr=1e-2 base=lamb base_label=Lamb label="1-bit Lamb"
  runs=("lamb Lamb 0" "onebit OneBitLamb 0" "onebit-zero2 OneBitLamb 2")
else
  lr=1e-3 base=adam base_label=Adam label="1-bit Adam"
  runs=("adam Adam 0" "onebit OneBitAdam 0" "onebit-zero2 OneBitAdam 2" "zeroone ZeroOneAdam 0")
fi
echo "$label convergence: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $ranks ranks, $steps steps" \
     "(freeze_step $freeze), batch $batch, model ${model[*]}"
for run in "${runs[@]}"; do
  read -r name type stage <<<"$run"
  config "$type" "$stage" > "$out/$name.json"
  build/apps/ds-launch --num_procs "$ranks" build/apps/ds-train --config "$out/$name.json" --data "$data" "${model[@]}" \
    --steps "$steps" --eval-interval 50 --eval-examples 128 --metrics "$out/$name.csv" --plot "" > "$out/$name.log" 2>&1
  { echo "step,heldout"; sed -nE 's/.*ds-train: step ([0-9]+) held-out loss ([0-9.]+).*/\1,\2/p' "$out/$name.log"; } > "$out/$name-heldout.csv"
done
first=$(tail -1 "$out/$base-heldout.csv" | cut -d, -f2)
curves=("$base_label=$out/$base-heldout.csv:step:heldout" "$label=$out/onebit-heldout.csv:step:heldout"
        "$label, ZeRO-2=$out/onebit-zero2-heldout.csv:step:heldout")
others=(onebit onebit-zero2)
if [ "$family" != lamb ]; then
  others+=(zeroone)
  curves+=("0/1 Adam=$out/zeroone-heldout.csv:step:heldout")
fi
for name in "${others[@]}"; do
  b=$(tail -1 "$out/$name-heldout.csv" | cut -d, -f2)
  echo "held-out loss at step $steps: $base_label $first, $name $b, difference $(echo "($b - $first) / $first * 100" | bc -l | xargs printf '%+.2f') %"
done
build/bench/plot_runs --out "$out/onebit-convergence.svg" --y "held-out loss" \
  --title "ds-train, tinyshakespeare, $ranks ranks: $base_label vs $label (freeze $freeze)" "${curves[@]}"
echo "chart: $out/onebit-convergence.svg"
