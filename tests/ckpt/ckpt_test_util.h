// Shared by the checkpoint tests: a temporary directory, a small model layout with sizes that
// do not divide evenly, random "training state" for it, and saving it as N ranks would.
#pragma once

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <string>

#include "support/files.h"
#include <vector>

#include "ds/ckpt/checkpoint.h"

namespace ds::ckpt::test {

// mkdtemp under TMPDIR (or /tmp); removed with its contents.
// Removed with its contents.
using TempDir = ds::test::TempDir;

// Units of a toy model: "root" (2 params), "blocks.0" and "blocks.1" (3 each), "head" (1);
// odd shapes, each unit padded to a multiple of pad_to.
std::vector<UnitInfo> toy_units(int64_t pad_to = 8);
// The same parameters grouped differently: one unit holding all of them, padded to pad_to.
std::vector<UnitInfo> regrouped(const std::vector<UnitInfo>& units, int64_t pad_to);

// Full (unsharded) flat buffers: fp32[u] and states[u][k], random, zero padding.
struct FullState {
  std::vector<at::Tensor> fp32;
  std::vector<std::vector<at::Tensor>> states;
};
FullState random_state(const std::vector<UnitInfo>& units, int n_states, uint64_t seed);
// What part k of `p` holds of every unit (fresh tensors, as a ZeRO rank keeps them).
std::vector<UnitShard> part_of(const std::vector<UnitInfo>& units, const FullState& full, const Partition& p,
                               int k);
// Parameter `name` of the full state, shaped.
at::Tensor param_of(const std::vector<UnitInfo>& units, const FullState& full, const std::string& name);

Manifest toy_layout(const std::vector<UnitInfo>& units, const std::string& tag, const Partition& p,
                    int n_states = 2);
// module = every parameter (views of the fp32 buffers) plus a buffer "head.steps" (int64).
ModelStates toy_model_states(const std::vector<UnitInfo>& units, const FullState& full);

// Saves `full` under partition p, one writer call per part (as p.count ranks would).
void save_as_ranks(const std::string& dir, const std::vector<UnitInfo>& units, const FullState& full,
                   const Partition& p, const std::string& tag, int n_states = 2);

bool bit_equal(const at::Tensor& a, const at::Tensor& b);
std::string slurp(const std::string& path);
void spit(const std::string& path, const std::string& text);

}  // namespace ds::ckpt::test
