#!/usr/bin/env bash
# ZeRO++ on a slow link: two "hosts" (network namespaces joined by a veth pair whose rate
# `tc qdisc ... tbf` limits), two ranks each, ds-train at ZeRO stage 3 on tinyshakespeare with
# the same model, data and steps, plain and with qwZ (zero_quantized_weights), hpZ
# (zero_hpz_partition_size 2: a host's ranks), qgZ (zero_quantized_gradients) and all three.
# For each: the median time per step (steps > 5), the bytes that crossed the link per step,
# and the final training loss (mean of the last 10 steps) beside plain stage 3's. Needs root.
#   bench/zero_plus_plus.sh [OUT_DIR]     # STEPS=60 BATCH=8 LAYERS=4 WIDTH=256 RATES="200mbit" REUSE=0
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-bench-zero-plus-plus}")
steps=${STEPS:-60}
batch=${BATCH:-8}
rates=${RATES:-"200mbit"}
cases=${CASES:-"plain qwz hpz qgz all"}
reuse=${REUSE:-0}  # 0: a unit is gathered again for its backward, as in a model beyond the default distance
data=$(realpath "${DATA:-../shared/data/tinyshakespeare.txt}")
model=(--n-layer "${LAYERS:-4}" --n-head 4 --d-model "${WIDTH:-256}" --seq-len "${CONTEXT:-128}")
mkdir -p "$out"
source bench/two_hosts.sh
printf '%s slots=2\n%s slots=2\n' "$a" "$b" > "$out/hostfile"
keys() {
  case "$1" in
    plain) echo "" ;;
    qwz) echo ', "zero_quantized_weights": true' ;;
    hpz) echo ', "zero_hpz_partition_size": 2' ;;
    qgz) echo ', "zero_quantized_gradients": true' ;;
    all) echo ', "zero_quantized_weights": true, "zero_hpz_partition_size": 2, "zero_quantized_gradients": true' ;;
  esac
}
for c in $cases; do
  cat > "$out/$c.json" <<JSON
{"train_batch_size": $batch, "train_micro_batch_size_per_gpu": $((batch / 4)), "seed": 1234,
 "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "betas": [0.9, 0.98], "weight_decay": 0.01}},
 "gradient_clipping": 1.0, "steps_per_print": 20,
 "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 1000,
                       "stage3_max_reuse_distance": $reuse$(keys "$c")}}
JSON
done
median_ms() { awk -F, 'NR > 6 { print $7 }' "$1" | sort -n | awk '{ v[NR] = $1 } END { printf "%.0f", v[int((NR + 1) / 2)] }'; }
final_loss() { awk -F, 'NR > 1 { l[NR] = $2 } END { s = 0; for (i = NR - 9; i <= NR; i++) s += l[i]; printf "%.4f", s / 10 }' "$1"; }
echo "ZeRO++ on a slow link: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); 2 hosts x 2 ranks," \
     "$steps steps, batch $batch, model ${model[*]}, fp32, ZeRO stage 3, stage3_max_reuse_distance $reuse"
for rate in $rates; do
  limit_link "$rate"
  for c in $cases; do
    before=$(link_bytes)
    build/apps/ds-launch --hostfile "$out/hostfile" --launcher_cmd "ip netns exec {host}" --master_addr "$ip_a" \
      build/apps/ds-train --config "$out/$c.json" --data "$data" "${model[@]}" --steps "$steps" --threads 1 \
      --eval-interval 0 --eval-examples 32 --metrics "$out/$c-$rate.csv" --plot "" > "$out/$c-$rate.log" 2>&1
    mib=$(echo "($(link_bytes) - $before) / $steps / 1048576" | bc -l | xargs printf '%.1f')
    echo "$rate $c: $(median_ms "$out/$c-$rate.csv") ms/step, $mib MiB/step over the link, final loss $(final_loss "$out/$c-$rate.csv")"
  done
done
