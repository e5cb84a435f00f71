#!/usr/bin/env bash
# ZeRO stages 0-2 on 1, 2 and 4 local ranks (GPT-2 124M shape by default; extra args go to
# zero_bench, e.g. --layers 4 for a quicker run). Run from the repository root after a build.
set -euo pipefail
for ranks in 1 2 4; do
  for stage in 0 1 2; do
    build/apps/ds-launch --num_procs "$ranks" --no_prefix build/bench/zero_bench --stage "$stage" "$@" | grep -v "^$"
  done
done
