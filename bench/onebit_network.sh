#!/usr/bin/env bash
# 1-bit Adam and 0/1 Adam against Adam on a slow link: two "hosts" (network namespaces joined by a veth
# pair whose rate `tc qdisc ... tbf` limits), one rank each, ds-train on tinyshakespeare with
# the same model, data, schedule and steps. For each RATE (default "100mbit 1gbit"): the median
# time per step in the compressed phase, the whole run's time, and the time until the training
# loss (mean of 10 steps) first reaches Adam's final one. Needs root (ip netns, tc).
#   bench/onebit_network.sh [OUT_DIR]     # STEPS=150 FREEZE=30 BATCH=4 LAYERS=4 WIDTH=256 RATES="100mbit 1gbit"
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-bench-onebit-network}")
steps=${STEPS:-150}
batch=${BATCH:-4}
freeze=${FREEZE:-30}
rates=${RATES:-"100mbit 1gbit"}
data=$(realpath "${DATA:-../shared/data/tinyshakespeare.txt}")
model=(--n-layer "${LAYERS:-4}" --n-head 4 --d-model "${WIDTH:-256}" --seq-len "${CONTEXT:-128}")
mkdir -p "$out"
source bench/two_hosts.sh
printf '%s slots=1\n%s slots=1\n' "$a" "$b" > "$out/hostfile"
config() {  # config OPTIMIZER
  local params='"lr": 1e-3, "betas": [0.9, 0.98], "weight_decay": 0.01'
  [ "$1" = OneBitAdam ] && params="$params, \"freeze_step\": $freeze"
  [ "$1" = ZeroOneAdam ] && params="$params, \"var_freeze_step\": $freeze, \"local_step_scaler\": 10, \"local_step_clipper\": 8"
  cat <<JSON
{"train_batch_size": $batch, "train_micro_batch_size_per_gpu": $((batch / 2)), "seed": 1234,
 "optimizer": {"type": "$1", "params": {$params}},
 "scheduler": {"type": "WarmupLR", "params": {"warmup_min_lr": 0.0, "warmup_max_lr": 1e-3, "warmup_num_steps": $freeze,
               "warmup_type": "linear"}},
 "gradient_clipping": 1.0, "steps_per_print": 20}
JSON
}
config Adam > "$out/adam.json"
config OneBitAdam > "$out/onebit.json"
config ZeroOneAdam > "$out/zeroone.json"
# median ms/step over steps > from; total seconds; seconds until the 10-step mean loss <= target
stats() {  # stats CSV FROM TARGET
  local median
  median=$(awk -F, -v from="$2" 'NR > 1 && $1 > from { print $7 }' "$1" | sort -n | awk '{ v[NR] = $1 } END { printf "%.0f", v[int((NR + 1) / 2)] }')
  awk -F, -v target="$3" -v median="$median" 'NR > 1 {
      t += $7 / 1000; n++; win[n % 10] = $2
      if (n >= 10 && !hit) { s = 0; for (k in win) s += win[k]; if (s / 10 <= target) hit = t } }
    END { printf "%s %.1f %s", median, t, hit ? sprintf("%.1f", hit) : "never" }' "$1"
}
echo "1-bit Adam and 0/1 Adam on a slow link: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); 2 hosts x 1 rank," \
     "$steps steps (freeze_step $freeze), batch $batch, model ${model[*]}"
for rate in $rates; do
  limit_link "$rate"
  for name in adam onebit zeroone; do
    build/apps/ds-launch --hostfile "$out/hostfile" --launcher_cmd "ip netns exec {host}" --master_addr "$ip_a" \
      build/apps/ds-train --config "$out/$name.json" --data "$data" "${model[@]}" --steps "$steps" --threads 1 \
      --eval-interval 0 --eval-examples 32 --metrics "$out/$name-$rate.csv" --plot "" > "$out/$name-$rate.log" 2>&1
  done
  target=$(awk -F, 'NR > 1 { l[NR] = $2 } END { s = 0; for (i = NR - 9; i <= NR; i++) s += l[i]; printf "%.4f", s / 10 }' "$out/adam-$rate.csv")
  read -r adam_ms adam_s adam_hit <<<"$(stats "$out/adam-$rate.csv" "$((freeze + 2))" "$target")"
  read -r ob_ms ob_s ob_hit <<<"$(stats "$out/onebit-$rate.csv" "$((freeze + 2))" "$target")"
  read -r zo_ms zo_s zo_hit <<<"$(stats "$out/zeroone-$rate.csv" "$((freeze + 2))" "$target")"
  ratio() { echo "$1 / $2" | bc -l | xargs printf '%.2f'; }
  echo "$rate: ms/step after step $((freeze + 2)): Adam $adam_ms, 1-bit Adam $ob_ms ($(ratio "$adam_ms" "$ob_ms")x)," \
       "0/1 Adam $zo_ms ($(ratio "$adam_ms" "$zo_ms")x); whole run: Adam $adam_s s, 1-bit Adam $ob_s s" \
       "($(ratio "$adam_s" "$ob_s")x), 0/1 Adam $zo_s s ($(ratio "$adam_s" "$zo_s")x); to Adam's final loss $target:" \
       "Adam $adam_hit s, 1-bit Adam $ob_hit s, 0/1 Adam $zo_hit s"
done
