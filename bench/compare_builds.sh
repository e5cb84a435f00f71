#!/usr/bin/env bash
# Proof that a change kept training bit for bit: trains the same small GPT with two builds of
# ds-train (e.g. the commit before a refactor, built into another directory, and this one)
# over 22 configurations — ZeRO stages 0-3 x fp32/bf16/fp16, optimizer states and weight
# shards swapped to disk, SGD and Lion — on 2 local ranks, and compares every step's loss and
# gradient norm (all 17 digits of the metrics CSV) and the consolidated fp32 weights
# (ds-ckpt to-fp32, hashed by Python's torch). Prints one line per configuration that differs
# and a summary; exits 1 when any differs.
#
#   git worktree add /tmp/before <commit> && (cd /tmp/before && scripts/build)
#   bench/compare_builds.sh /tmp/before/build build
set -euo pipefail
if [ $# -ne 2 ]; then
  echo "usage: bench/compare_builds.sh BUILD_DIR_A BUILD_DIR_B" >&2
  exit 2
fi
a=$(realpath "$1"); b=$(realpath "$2")
work=$(mktemp -d /tmp/ds-compare.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/swap"

/usr/bin/python3 - "$work" <<'EOF'
import json, sys
work = sys.argv[1]
base = lambda stage: {
    "train_batch_size": 16, "gradient_accumulation_steps": 2,
    "optimizer": {"type": "AdamW", "params": {"lr": 0.003, "weight_decay": 0.01}},
    "scheduler": {"type": "WarmupLR", "params": {"warmup_num_steps": 3, "warmup_max_lr": 0.003}},
    "gradient_clipping": 0.5, "steps_per_print": 100,
    "zero_optimization": {"stage": stage, "overlap_comm": True, "reduce_bucket_size": 3000,
                          "stage3_param_persistence_threshold": 500, "stage3_prefetch_bucket_size": 20000}}
cfgs = {}
for stage in range(4):
    for prec in ("fp32", "bf16", "fp16"):
        c = base(stage)
        if prec == "bf16": c["bf16"] = {"enabled": True}
        if prec == "fp16": c["fp16"] = {"enabled": True, "initial_scale_power": 12}
        cfgs[f"s{stage}_{prec}"] = c
swap = {"device": "nvme", "nvme_path": work + "/swap"}
for stage in (1, 2, 3):
    for prec in ("fp32", "bf16"):
        c = json.loads(json.dumps(cfgs[f"s{stage}_{prec}"]))
        c["zero_optimization"].update({"offload_optimizer": swap, "sub_group_size": 5000})
        cfgs[f"s{stage}_{prec}_nvme"] = c
c = json.loads(json.dumps(cfgs["s3_bf16_nvme"])); c["zero_optimization"]["offload_param"] = swap
cfgs["s3_bf16_nvme_param"] = c
c = json.loads(json.dumps(cfgs["s3_bf16"])); c["zero_optimization"]["offload_param"] = swap
cfgs["s3_bf16_param"] = c
c = json.loads(json.dumps(cfgs["s2_fp32"])); c["optimizer"] = {"type": "SGD", "params": {"lr": 0.05, "momentum": 0.9}}
cfgs["s2_sgd"] = c
c = json.loads(json.dumps(cfgs["s0_fp32"])); c["optimizer"] = {"type": "Lion", "params": {"lr": 0.0003}}
cfgs["s0_lion"] = c
for name, c in cfgs.items():
    json.dump(c, open(f"{work}/cfg_{name}.json", "w"))
open(f"{work}/names", "w").write("\n".join(cfgs))
EOF

run() {  # run BUILD OUT NAME: metrics (step..skipped columns) and a hash of the fp32 weights
  local build=$1 out=$2 n=$3
  mkdir -p "$out"
  "$build/apps/ds-launch" --num_procs 2 "$build/apps/ds-train" --config "$work/cfg_$n.json" --n-layer 2 \
    --n-head 2 --d-model 64 --steps 6 --eval-interval 0 --metrics "$out/$n.csv" --plot "" \
    --save "$out/ck_$n" > "$out/$n.log" 2>&1 || { echo "training failed: $out/$n.log" >&2; return 1; }
  "$build/apps/ds-ckpt" to-fp32 "$out/ck_$n" "$out/$n" > /dev/null
  cut -d, -f1-6 "$out/$n.csv" > "$out/$n.metrics"
  /usr/bin/python3 -c "
import hashlib, sys, torch
sd = torch.load(sys.argv[1]); h = hashlib.sha1()
for k in sorted(sd): h.update(k.encode()); h.update(sd[k].float().numpy().tobytes())
print(h.hexdigest())" "$out/$n.pt" > "$out/$n.sha"
}

same=0; differ=0
for n in $(cat "$work/names"); do
  run "$a" "$work/a" "$n"
  run "$b" "$work/b" "$n"
  if cmp -s "$work/a/$n.metrics" "$work/b/$n.metrics" && cmp -s "$work/a/$n.sha" "$work/b/$n.sha"; then
    same=$((same + 1))
  else
    differ=$((differ + 1)); echo "differs: $n"
  fi
done
echo "compare_builds: $same configurations identical, $differ differ"
[ "$differ" -eq 0 ]
