#!/bin/sh
# python_crosscheck.sh FIXTURE DS_CKPT CHECK_PY: a checkpoint from FIXTURE, consolidated by
# ds-ckpt to-fp32, read back by Python's torch.load and a json+numpy safetensors reader.
# Exits 77 (CTest: skipped) when no python3 with torch and numpy is found.
set -eu
fixture=$1 ds_ckpt=$2 check_py=$3
py=""
for candidate in "${DS_PYTHON:-}" /usr/bin/python3 python3; do
  if [ -n "$candidate" ] && "$candidate" -c "import torch, numpy" >/dev/null 2>&1; then
    py=$candidate
    break
  fi
done
if [ -z "$py" ]; then
  echo "SKIP: no python3 with torch and numpy (Debian: apt-get install python3-torch python3-numpy)"
  exit 77
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$fixture" "$work/ckpt" "$work/reference.json"
"$ds_ckpt" to-fp32 "$work/ckpt" "$work/model"
"$py" "$check_py" "$work/ckpt" "$work/model" "$work/reference.json"
