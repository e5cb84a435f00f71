#!/usr/bin/env bash
# The CPU allocator under ds-train: LibTorch's own (glibc malloc), the engine's caching
# allocator (the default), and tcmalloc preloaded (Debian's libtcmalloc-minimal4, with
# DS_ALLOCATOR=system), run alternately in one session. Prints tokens/s (ds-train's own
# figure), user and system CPU seconds and peak RSS (GNU time) for each.
#   bench/allocator_bench.sh                        # context 1024 (GPT 2 x 128, batch 4, 1 rank)
#   bench/allocator_bench.sh anchor                 # context 128 (GPT 4 x 256, micro-batch 8, 2 ranks)
set -euo pipefail
cd "$(dirname "$0")/.."
shape=${1:-long}
rounds=${ROUNDS:-2}
tc=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [ "$shape" = anchor ]; then
  echo '{"train_batch_size": 16, "train_micro_batch_size_per_gpu": 8, "optimizer": {"type": "AdamW", "params": {"lr": 1e-3}}, "zero_optimization": {"stage": 2}}' > "$work/c.json"
  args=(--num_procs 2 build/apps/ds-train --config "$work/c.json" --data ../shared/data/tinyshakespeare.txt --n-layer 4 --n-head 4 --d-model 256 --seq-len 128 --steps 15 --eval-interval 0 --eval-examples 8 --plot "")
else
  echo '{"train_batch_size": 4, "optimizer": {"type": "AdamW", "params": {"lr": 1e-3}}}' > "$work/c.json"
  args=(--num_procs 1 build/apps/ds-train --config "$work/c.json" --data ../shared/data/tinyshakespeare.txt --n-layer 2 --n-head 2 --d-model 128 --seq-len 1024 --steps 15 --eval-interval 0 --eval-examples 4 --plot "")
fi
run() {  # run NAME ENV...
  local name=$1; shift
  /usr/bin/time -f "%U %S %M" -o "$work/time" env "$@" build/apps/ds-launch "${args[@]}" > "$work/out" 2>&1
  local tps user sys rss
  tps=$(grep -o '[0-9]* tokens/s' "$work/out" | tail -1 | cut -d' ' -f1)
  read -r user sys rss < "$work/time"
  printf "%-10s %8s tokens/s  user %6.1f s  sys %6.1f s  peak RSS %6.0f MiB (max over processes)\n" "$name" "$tps" "$user" "$sys" "$(echo "$rss/1024" | bc -l)"
}
echo "allocator_bench ($shape): $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) CPUs"
for r in $(seq "$rounds"); do
  run glibc DS_ALLOCATOR=system
  run caching DS_ALLOCATOR=caching
  [ -e "$tc" ] && run tcmalloc DS_ALLOCATOR=system LD_PRELOAD="$tc"
done
