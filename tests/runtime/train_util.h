// Trains a tiny GPT on the embedded "reverse" task with a given ds_config, the way ds-train
// does (global batch split by rank and micro-batch), and returns what the tests compare.
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <string>
#include <vector>

#include "ds/comm/communicator.h"
#include "ds/runtime/engine.h"

namespace ds::test {

struct TrainResult {
  std::vector<double> losses;  // global-batch mean per step
  std::vector<double> scales;  // loss scale per step
  std::vector<bool> skipped;
  at::Tensor weights;          // the model's full weights, every unit concatenated (unpadded)
  at::Tensor key_bias;         // bool mask over `weights`: the attention key biases, whose true
                               // gradient is 0 (softmax ignores a shift), so what they get is
                               // rounding noise that Adam amplifies to +-lr steps
};

// `config_json` is a full ds_config; it is resolved for comm->size() ranks.
// `before_backward` (optional) runs before each backward with the engine and the step index
// (to inject faults with tensor hooks).
TrainResult train_tiny(std::shared_ptr<comm::Communicator> comm, const std::string& config_json, int steps,
                       const std::function<void(Engine&, int)>& before_backward = {});

// A world-of-one communicator (no network), for in-process baselines.
std::shared_ptr<comm::Communicator> solo();

double max_abs_diff(const std::vector<double>& a, const std::vector<double>& b);

}  // namespace ds::test
