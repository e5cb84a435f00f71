#!/usr/bin/env bash
# Does bf16 compute converge like fp32? ds-train on tinyshakespeare, GPT 6 x 384, context 256,
# the same seed, data order and config except the precision: fp32, and bf16.enabled with the
# compute forced to bf16 (DS_COMPUTE_DTYPE=bf16, so the run means the same on any CPU; on one
# without native bf16 LibTorch converts, with the same fp32 accumulation). 2 ranks, ZeRO stage 2.
# Prints both held-out losses and their relative difference, and draws both curves in one SVG.
#   bench/convergence.sh [OUT_DIR]        # STEPS=1000 BATCH=4 by default
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench-convergence}
steps=${STEPS:-1000}
batch=${BATCH:-4}
data=${DATA:-../shared/data/tinyshakespeare.txt}
mkdir -p "$out"
config() {  # config BF16(true|false)
  cat <<EOF
{"train_batch_size": $batch, "train_micro_batch_size_per_gpu": $((batch / 2)), "seed": 1234,
 "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "betas": [0.9, 0.98], "weight_decay": 0.01}},
 "scheduler": {"type": "WarmupDecayLR", "params": {"warmup_min_lr": 0.0, "warmup_max_lr": 1e-3,
               "warmup_num_steps": 100, "total_num_steps": $steps}},
 "gradient_clipping": 1.0, "steps_per_print": 100,
 "zero_optimization": {"stage": 2}, "bf16": {"enabled": $1}}
EOF
}
echo "convergence: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $steps steps, batch $batch"
for mode in fp32 bf16; do
  if [ "$mode" = fp32 ]; then config false > "$out/$mode.json"; env=(DS_COMPUTE_DTYPE=auto)
  else config true > "$out/$mode.json"; env=(DS_COMPUTE_DTYPE=bf16); fi
  env "${env[@]}" build/apps/ds-launch --num_procs 2 build/apps/ds-train --config "$out/$mode.json" --data "$data" \
    --n-layer 6 --n-head 6 --d-model 384 --seq-len 256 --steps "$steps" --eval-interval 100 --eval-examples 64 \
    --metrics "$out/$mode.csv" --plot "" > "$out/$mode.log" 2>&1
  # held-out points as CSV for the chart
  { echo "step,heldout"; sed -nE 's/.*ds-train: step ([0-9]+) held-out loss ([0-9.]+).*/\1,\2/p' "$out/$mode.log"; } > "$out/$mode-heldout.csv"
  grep -E "precision|tokens/s" "$out/$mode.log" | tail -2
done
a=$(tail -1 "$out/fp32-heldout.csv" | cut -d, -f2)
b=$(tail -1 "$out/bf16-heldout.csv" | cut -d, -f2)
echo "held-out loss at step $steps: fp32 $a, bf16 compute $b, difference $(echo "($b - $a) / $a * 100" | bc -l | xargs printf '%+.2f') %"
build/bench/plot_runs --out "$out/convergence.svg" --y loss \
  --title "ds-train, tinyshakespeare, GPT 6 x 384, context 256: fp32 vs bf16 compute" \
  "fp32 train=$out/fp32.csv:step:loss" "bf16 compute train=$out/bf16.csv:step:loss" \
  "fp32 held-out=$out/fp32-heldout.csv:step:heldout" "bf16 compute held-out=$out/bf16-heldout.csv:step:heldout"
echo "chart: $out/convergence.svg"
