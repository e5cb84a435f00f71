#!/usr/bin/env bash
# Installs the build tree into a temporary prefix, configures and builds examples/ against
# it with find_package(deepspeed_cpp), and runs the example (1 process, then 2 ranks).
set -euo pipefail
build_dir=$1 source_dir=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cmake --install "$build_dir" --prefix "$work/prefix" > "$work/install.log" || { cat "$work/install.log"; exit 1; }
cmake -S "$source_dir/examples" -B "$work/build" -G Ninja -DCMAKE_PREFIX_PATH="$work/prefix" > "$work/cfg.log" 2>&1 ||
  { cat "$work/cfg.log"; echo "test_install: configuring examples/ against the installed package failed"; exit 1; }
cmake --build "$work/build" > "$work/build.log" 2>&1 || { tail -40 "$work/build.log"; echo "test_install: building examples failed"; exit 1; }
cd "$source_dir/examples/custom_model"
"$work/build/custom_model" ds_config.json
"$work/prefix/bin/ds-launch" --num_procs 2 "$work/build/custom_model" ds_config.json
echo "test_install: ok"
