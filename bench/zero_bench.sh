#!/usr/bin/env bash
# ZeRO stages 0-3 on 1, 2 and 4 local ranks (GPT-2 124M shape by default; extra args go to
# zero_bench, e.g. --layers 4 for a quicker run). Run from the repository root after a build.
set -euo pipefail
for ranks in 1 2 4; do
  for stage in 0 1 2; do
    build/apps/ds-launch --num_procs "$ranks" --no_prefix build/bench/zero_bench --stage "$stage" "$@" | grep -v "^$"
  done
  # Stage 3 twice: releasing every unit after use (reuse distance 1: only the tied head stays
  # from its forward to its backward; traffic 3 Psi), and with DeepSpeed's default distance
  # (1e9: units stay gathered from their forward to their backward; traffic 2 Psi).
  build/apps/ds-launch --num_procs "$ranks" --no_prefix build/bench/zero_bench --stage 3 --reuse-distance 1 "$@" | grep -v "^$"
  build/apps/ds-launch --num_procs "$ranks" --no_prefix build/bench/zero_bench --stage 3 "$@" | grep -v "^$"
done
