#!/usr/bin/env bash
# ds-estimate against measured runs (docs/BENCHMARKS.md "The estimator"): for two GPT sizes
# at ZeRO stages 0-3 on 1, 2 and 4 local ranks, with optimizer states on disk, and in 2
# pipeline stages and/or 2 tensor ranks (4 micro-batches a step), the
# predicted peak RSS per rank and step time (ds-estimate --calibrate, measured here first)
# against ds-train's peak RSS and median step time (steps 3 and later), in one run.
#   bench/estimate_validation.sh                  # STEPS=6; CASES="m 2 3" for one case
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${STEPS:-6}
data=${DATA:-../shared/data/tinyshakespeare.txt}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
grep -m1 "model name" /proc/cpuinfo
declare -A shape=(
  [s]="--n-layer 4 --n-head 4 --d-model 256 --seq-len 256"
  [m]="--n-layer 8 --n-head 8 --d-model 512 --seq-len 256"
)
# model ranks stage [offload|-] [pp2|tp2: 2 pipeline stages or 2 tensor ranks, 4 micro-batches a step;
# ob: OneBitAdam with freeze_step 2, so the measured steps (3 on) are its compressed phase;
# sp2: Ulysses over 2 sequence ranks, which read the same samples;
# zpp: ZeRO++ (qwZ, qgZ and hpZ over 2 ranks; stage 3)]
cases=("s 1 0" "s 2 0" "s 2 1" "s 2 2" "s 2 3" "s 4 3"
       "m 1 0" "m 2 0" "m 2 1" "m 2 2" "m 2 3" "m 4 0" "m 4 2" "m 4 3" "m 2 2 nvme"
       "s 2 1 - pp2" "s 2 1 - tp2" "m 2 1 - pp2" "m 2 1 - tp2" "m 4 1 - pp2tp2"
       "s 2 0 - ob" "m 2 2 - ob" "s 2 1 - sp2" "m 2 2 - sp2" "m 2 3 - zpp" "m 4 3 - zpp")
[ -z "${CASES:-}" ] || cases=("$CASES")
printf "%-16s %12s %12s %7s %10s %10s %7s\n" "case" "peak pred" "peak meas" "err" "step pred" "step meas" "err"
for c in "${cases[@]}"; do
  read -r model ranks stage offload split <<<"$c"
  offload=${offload:-}
  split=${split:-}
  off=""
  [ "$offload" = nvme ] && off=", \"offload_optimizer\": {\"device\": \"nvme\", \"nvme_path\": \"$work\"}, \"sub_group_size\": 2000000"
  pp=1 tp=1 batch=$((2 * ranks)) layout=""
  optimizer='{"type": "AdamW", "params": {"lr": 0.0003}}'
  case "$split" in *ob*) optimizer='{"type": "OneBitAdam", "params": {"lr": 0.0003, "eps": 0.001, "freeze_step": 2}}' ;; esac
  case "$split" in *pp2*) pp=2 ;; esac
  case "$split" in *tp2*) tp=2 ;; esac
  if [ "$pp" -gt 1 ] || [ "$tp" -gt 1 ]; then
    batch=$((2 * 4 * ranks / (pp * tp)))
    layout=", \"pipeline\": {\"stages\": $pp}, \"tensor_parallel\": {\"autotp_size\": $tp}"
  fi
  case "$split" in *sp2*) batch=$((2 * ranks / 2)) layout=", \"sequence_parallel_size\": 2" ;; esac
  case "$split" in
    *zpp*) off="$off, \"zero_quantized_weights\": true, \"zero_quantized_gradients\": true, \"zero_hpz_partition_size\": 2" ;;
  esac
  cat >"$work/c.json" <<EOF
{"train_batch_size": $batch, "train_micro_batch_size_per_gpu": 2, "steps_per_print": 1000,
 "optimizer": $optimizer, "zero_optimization": {"stage": $stage$off}$layout}
EOF
  # shellcheck disable=SC2086
  build/apps/ds-estimate --config "$work/c.json" ${shape[$model]} --vocab 256 --ranks-per-node "$ranks" \
    --calibrate --disk-dir "$work" >"$work/est.txt" 2>"$work/est.err" || { cat "$work/est.err"; exit 1; }
  # shellcheck disable=SC2086
  build/apps/ds-launch --num_procs "$ranks" --no_prefix build/apps/ds-train --config "$work/c.json" --data "$data" \
    ${shape[$model]} --steps "$steps" --plot "" --eval-interval 0 --eval-examples 2 --metrics "$work/m.csv" \
    >"$work/train.txt" 2>&1 || { tail -5 "$work/train.txt"; exit 1; }
  python3 - "$work" "$model ${ranks}r z$stage ${offload#-} $split" <<'PY'
import csv, re, statistics, sys
work, name = sys.argv[1], sys.argv[2]
units = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}
def size(text):
    v, u = text.split()
    return float(v) * units[u]
est = open(f"{work}/est.txt").read()
pred_peak = size(re.search(r"= peak RSS\s+([\d.]+ \w+)", est).group(1))
pred_step = float(re.search(r"step: ([\d.]+) s", est).group(1))
train = open(f"{work}/train.txt").read()
meas_peak = size(re.search(r"peak RSS ([\d.]+ \w+) per rank", train).group(1))
rows = list(csv.DictReader(open(f"{work}/m.csv")))
meas_step = statistics.median(float(r["ms_per_step"]) for r in rows[2:]) / 1e3
print(f"{name:16s} {pred_peak/2**20:9.0f} MiB {meas_peak/2**20:9.0f} MiB {100*(pred_peak/meas_peak-1):+6.1f}% "
      f"{pred_step:9.3f}s {meas_step:9.3f}s {100*(pred_step/meas_step-1):+6.1f}%")
PY
done
